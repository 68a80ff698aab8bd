"""Typed primitives, one family per module: priors, weighters, margins, links, terms."""

from mipo.primitives.attribution import (
    GradientAttributionWeights as GradientAttributionWeights,
)
from mipo.primitives.f_divergence import AbstractFDivergence as AbstractFDivergence
from mipo.primitives.f_divergence import AlphaDivergence as AlphaDivergence
from mipo.primitives.f_divergence import FDivergenceLink as FDivergenceLink
from mipo.primitives.f_divergence import ForwardKL as ForwardKL
from mipo.primitives.f_divergence import JensenShannon as JensenShannon
from mipo.primitives.f_divergence import ReverseKL as ReverseKL
from mipo.primitives.learned_prior import MarginalFitPrior as MarginalFitPrior
from mipo.primitives.length_desensitised import (
    LengthDesensitisedWeights as LengthDesensitisedWeights,
)
from mipo.primitives.link import AbstractLink as AbstractLink
from mipo.primitives.link import DiscoPOPLink as DiscoPOPLink
from mipo.primitives.link import ExoLink as ExoLink
from mipo.primitives.link import HingeLink as HingeLink
from mipo.primitives.link import IPOLink as IPOLink
from mipo.primitives.link import LabelSmoothedLink as LabelSmoothedLink
from mipo.primitives.link import LogSigmoidLink as LogSigmoidLink
from mipo.primitives.link import RobustLink as RobustLink
from mipo.primitives.link_sum import LinkSum as LinkSum
from mipo.primitives.margin import AbstractMargin as AbstractMargin
from mipo.primitives.margin import ConstantMargin as ConstantMargin
from mipo.primitives.margin import LengthDifferenceMargin as LengthDifferenceMargin
from mipo.primitives.margin import NoMargin as NoMargin
from mipo.primitives.margin import SumMargin as SumMargin
from mipo.primitives.masks import AbstractMaskSource as AbstractMaskSource
from mipo.primitives.masks import ActivationMasks as ActivationMasks
from mipo.primitives.masks import DataMasks as DataMasks
from mipo.primitives.masks import LearnedMasks as LearnedMasks
from mipo.primitives.masks import MaskWeights as MaskWeights
from mipo.primitives.odds_ratio import OddsRatioLink as OddsRatioLink
from mipo.primitives.otpo import TransportTokenWeights as TransportTokenWeights
from mipo.primitives.otpo import UniformBudgetWeights as UniformBudgetWeights
from mipo.primitives.pair_link import AbstractPairLink as AbstractPairLink
from mipo.primitives.pair_link import PairRewards as PairRewards
from mipo.primitives.prior import AbstractPrior as AbstractPrior
from mipo.primitives.prior import AbstractPriorFactor as AbstractPriorFactor
from mipo.primitives.prior import AbstractSequencePrior as AbstractSequencePrior
from mipo.primitives.prior import BatchPrior as BatchPrior
from mipo.primitives.prior import GeometricMeanPrior as GeometricMeanPrior
from mipo.primitives.prior import LengthPenalty as LengthPenalty
from mipo.primitives.prior import PriorTerms as PriorTerms
from mipo.primitives.prior import ProductPrior as ProductPrior
from mipo.primitives.prior import ReferencePrior as ReferencePrior
from mipo.primitives.prior import SequentialKLPenalty as SequentialKLPenalty
from mipo.primitives.prior import TemperedReferencePrior as TemperedReferencePrior
from mipo.primitives.prior import TokenInterpolationPrior as TokenInterpolationPrior
from mipo.primitives.prior import UniformPrior as UniformPrior
from mipo.primitives.sided_links import APODownLink as APODownLink
from mipo.primitives.sided_links import APOZeroLink as APOZeroLink
from mipo.primitives.sided_links import BCOPairLink as BCOPairLink
from mipo.primitives.sided_links import NCAPairLink as NCAPairLink
from mipo.primitives.sided_links import SPPOHardLink as SPPOHardLink
from mipo.primitives.sorted_link import SortedLink as SortedLink
from mipo.primitives.terms import AbstractTerm as AbstractTerm
from mipo.primitives.terms import ChosenNLL as ChosenNLL
from mipo.primitives.terms import MaskL1 as MaskL1
from mipo.primitives.transforms import (
    AbstractWeightTransform as AbstractWeightTransform,
)
from mipo.primitives.transforms import ExponentialTransform as ExponentialTransform
from mipo.primitives.transforms import IdentityTransform as IdentityTransform
from mipo.primitives.transforms import RankTransform as RankTransform
from mipo.primitives.transforms import (
    ThresholdScaleTransform as ThresholdScaleTransform,
)
from mipo.primitives.transforms import ThresholdTransform as ThresholdTransform
from mipo.primitives.transforms import TopFractionTransform as TopFractionTransform
from mipo.primitives.transforms import TransformedWeights as TransformedWeights
from mipo.primitives.transforms import UniformRandomTransform as UniformRandomTransform
from mipo.primitives.triplet import LogRatioTriplet as LogRatioTriplet
from mipo.primitives.weighter import (
    AbstractSequenceWeighter as AbstractSequenceWeighter,
)
from mipo.primitives.weighter import AbstractTokenWeighter as AbstractTokenWeighter
from mipo.primitives.weighter import BatchTokenWeights as BatchTokenWeights
from mipo.primitives.weighter import MeanOverResponse as MeanOverResponse
from mipo.primitives.weighter import ProductWeighter as ProductWeighter
from mipo.primitives.weighter import SumOverResponse as SumOverResponse
from mipo.primitives.wpo import WPOLink as WPOLink
