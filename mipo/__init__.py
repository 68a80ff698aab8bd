"""mipo: composable DPO-family objectives under one mutual-information loss."""

from mipo.batch import PairBatch as PairBatch
from mipo.batch import Side as Side
from mipo.errors import BatchError as BatchError
from mipo.errors import CompositionError as CompositionError
from mipo.errors import NonFiniteLossError as NonFiniteLossError
from mipo.needs import Need as Need
from mipo.objective import LossOutput as LossOutput
from mipo.objective import Objective as Objective
from mipo.objective import Term as Term
from mipo.training.config import TrainConfig as TrainConfig
from mipo.training.pair_batch import pair_batch as pair_batch

__version__ = "0.1.0"
