"""Hand-worked DPO and SimPO values, checked against the oracles and against mipo.

The per-token log-probabilities are written out directly (no logits). Position 0
of every row is a prompt position and trailing positions may be padding; both
hold junk values (-7, -9) that must not count.

Constants used below (softplus(x) = log(1 + e^x) = -log sigma(-x)):

- softplus(0)  = log 2                 = 0.6931471805599453
- softplus(-1) = log(1 + e^-1)         = 0.31326168751822286
- softplus(1)  = 1 + softplus(-1)      = 1.3132616875182228
  (softplus(x) - softplus(-x) = x)
- softplus(-2) = log(1 + e^-2)         = 0.1269280110429725
"""

import oracles
import torch
from torch.testing import assert_close

from mipo import PairBatch, Side
from mipo.primitives import HingeLink
from mipo.training.recipes import load_recipe

F64 = torch.float64
SOFTPLUS_0 = 0.6931471805599453
SOFTPLUS_M1 = 0.31326168751822286
SOFTPLUS_1 = 1.3132616875182228
SOFTPLUS_M2 = 0.1269280110429725


def _tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# DPO: four pairs, seq 3, position 0 is the prompt.
DPO_MASK_C = _mask([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 1]])
DPO_MASK_R = _mask([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 1]])
DPO_POL_C = _tensor([[-7, -1, -1], [-7, -1.5, -9], [-7, -2, -1], [-7, -0.5, -0.5]])
DPO_REF_C = _tensor([[-7, -2, -1], [-7, -1.5, -9], [-7, -1, -1], [-7, -2.5, -0.5]])
DPO_POL_R = _tensor([[-7, -2, -1], [-7, -0.5, -9], [-7, -1, -1], [-7, -3, -1]])
DPO_REF_R = _tensor([[-7, -1, -1], [-7, -0.5, -9], [-7, -2, -1], [-7, -1, -1]])

# SimPO: three pairs, seq 4, position 0 is the prompt, trailing padding.
SIMPO_MASK_C = _mask([[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 1, 1]])
SIMPO_MASK_R = _mask([[0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 1, 0]])
SIMPO_POL_C = _tensor([[-7, -1, -0.5, -9], [-7, -0.5, -9, -9], [-7, -3, -1, -2]])
SIMPO_POL_R = _tensor([[-7, -1, -1, -1], [-7, -2, -0.5, -9], [-7, -1.5, -2, -9]])


def test_dpo_hand_worked_value() -> None:
    """beta = 0.5. Per pair, S_pol - S_ref over the response positions:

    1. chosen (-1 - 1) - (-2 - 1) = 1, rejected (-2 - 1) - (-1 - 1) = -1: h = 2,
       z = beta h = 1, loss softplus(-1) = 0.3132616875182228.
    2. one response token each, equal log-probs: h = 0, loss log 2.
    3. pair 1 with the roles' numbers swapped: h = -2, z = -1, loss softplus(1)
       = 1.3132616875182228.
    4. chosen (-0.5 - 0.5) - (-2.5 - 0.5) = 2, rejected (-3 - 1) - (-1 - 1) = -2:
       h = 4, z = 2, loss softplus(-2) = 0.1269280110429725.

    Mean: (0.3132616875182228 + 0.6931471805599453 + 1.3132616875182228
    + 0.1269280110429725) / 4 = 2.4465985666393637 / 4 = 0.6116496416598409.
    """
    expected = torch.tensor(
        (SOFTPLUS_M1 + SOFTPLUS_0 + SOFTPLUS_1 + SOFTPLUS_M2) / 4, dtype=F64
    )
    assert_close(expected, torch.tensor(0.6116496416598409, dtype=F64))
    chosen = oracles.OracleSide(logps=DPO_POL_C, mask=DPO_MASK_C, ref_logps=DPO_REF_C)
    rejected = oracles.OracleSide(logps=DPO_POL_R, mask=DPO_MASK_R, ref_logps=DPO_REF_R)
    assert_close(oracles.dpo(chosen, rejected, 0.5), expected)
    batch = PairBatch(
        chosen=Side(
            policy_logps=DPO_POL_C, reference_logps=DPO_REF_C, response_mask=DPO_MASK_C
        ),
        rejected=Side(
            policy_logps=DPO_POL_R, reference_logps=DPO_REF_R, response_mask=DPO_MASK_R
        ),
    )
    out = load_recipe("dpo").make_objective(beta=0.5)(batch)
    assert_close(out.loss, expected)
    assert_close(out.logits, torch.tensor([1.0, 0.0, -1.0, 2.0], dtype=F64))


def _simpo_inputs() -> tuple[oracles.OracleSide, oracles.OracleSide, PairBatch]:
    chosen = oracles.OracleSide(logps=SIMPO_POL_C, mask=SIMPO_MASK_C)
    rejected = oracles.OracleSide(logps=SIMPO_POL_R, mask=SIMPO_MASK_R)
    batch = PairBatch(
        chosen=Side(policy_logps=SIMPO_POL_C, response_mask=SIMPO_MASK_C),
        rejected=Side(policy_logps=SIMPO_POL_R, response_mask=SIMPO_MASK_R),
    )
    return chosen, rejected, batch


def test_simpo_hand_worked_value() -> None:
    """beta = 2, gamma_beta_ratio = 0.25 (gamma = 0.5); z = beta (avg_c - avg_r) - gamma
    with avg the mean response log-prob (|y| counts every response token):

    1. chosen (-1 - 0.5)/2 = -0.75, rejected (-1 - 1 - 1)/3 = -1: difference 0.25,
       z = 2 (0.25) - 0.5 = 0, loss log 2.
    2. chosen -0.5/1 = -0.5, rejected (-2 - 0.5)/2 = -1.25: difference 0.75,
       z = 1.5 - 0.5 = 1, loss softplus(-1) = 0.3132616875182228.
    3. chosen (-3 - 1 - 2)/3 = -2, rejected (-1.5 - 2)/2 = -1.75: difference -0.25,
       z = -0.5 - 0.5 = -1, loss softplus(1) = 1.3132616875182228.

    Mean: 2.319670555596391 / 3 = 0.7732235185321303.

    With sft_weight = 0.3: the chosen tokens of the batch are 2 + 1 + 3 = 6 with
    -log-probs summing to 1.5 + 0.5 + 6 = 8, a token-mean CE of 4/3, so the loss
    gains 0.3 (4/3) = 0.4: 1.1732235185321303.

    Hinge variant: relu(1 - z) = 1, 0, 2 for z = 0, 1, -1; mean 1.
    """
    sigmoid = torch.tensor((SOFTPLUS_0 + SOFTPLUS_M1 + SOFTPLUS_1) / 3, dtype=F64)
    assert_close(sigmoid, torch.tensor(0.7732235185321303, dtype=F64))
    with_sft = torch.tensor(1.1732235185321303, dtype=F64)
    hinge = torch.tensor(1.0, dtype=F64)
    chosen, rejected, batch = _simpo_inputs()
    simpo = load_recipe("simpo")

    assert_close(oracles.simpo(chosen, rejected, 2.0, 0.25), sigmoid)
    out = simpo.make_objective(beta=2.0, gamma_beta_ratio=0.25)(batch)
    assert_close(out.loss, sigmoid)
    assert_close(out.logits, torch.tensor([0.0, 1.0, -1.0], dtype=F64))

    assert_close(oracles.simpo(chosen, rejected, 2.0, 0.25, sft_weight=0.3), with_sft)
    objective = simpo.make_objective(beta=2.0, gamma_beta_ratio=0.25, sft_weight=0.3)
    assert_close(objective(batch).loss, with_sft)

    assert_close(oracles.simpo(chosen, rejected, 2.0, 0.25, loss_type="hinge"), hinge)
    objective = simpo.make_objective(beta=2.0, gamma_beta_ratio=0.25, link=HingeLink())
    assert_close(objective(batch).loss, hinge)
