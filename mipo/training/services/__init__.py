"""Model-side services: the trainer side of :mod:`mipo.services`.

:mod:`mipo.training.services.base` holds the interface and the registry; each
other module serves one kind of spec. Importing this package registers the
built-in services.
"""

from mipo.training.services.anchor import AnchorService as AnchorService
from mipo.training.services.attribution import (
    AttributionService as AttributionService,
)
from mipo.training.services.base import Forward as Forward
from mipo.training.services.base import Models as Models
from mipo.training.services.base import Service as Service
from mipo.training.services.base import ServiceSetup as ServiceSetup
from mipo.training.services.base import Stacked as Stacked
from mipo.training.services.base import build_services as build_services
from mipo.training.services.base import check_specs as check_specs
from mipo.training.services.base import evaluating as evaluating
from mipo.training.services.base import service_class as service_class
from mipo.training.services.learned_prior import (
    MarginalFitService as MarginalFitService,
)
from mipo.training.services.masks import (
    ActivationMaskService as ActivationMaskService,
)
from mipo.training.services.masks import LearnedMaskService as LearnedMaskService
from mipo.training.services.reference_cache import ReferenceCache as ReferenceCache
from mipo.training.services.reference_cache import (
    ReferenceCacheService as ReferenceCacheService,
)
from mipo.training.services.reference_sync import (
    ReferenceSyncService as ReferenceSyncService,
)
