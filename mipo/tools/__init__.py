"""Tools built on the core and the trainer: token-weight estimation
(``weights``), self-rewarding rounds (``dice``), token-weight pictures
(``pictures``), the documentation site and methods table (``site``, ``docs``,
``describe``) and the tabular mutual-information theory (``mi``)."""
