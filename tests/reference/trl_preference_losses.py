"""huggingface/trl @ d401a42588d1a856aed78b01326eb39048eafbaf (2025-12-08, the last commit where both
trl/trainer/dpo_trainer.py has `DPOTrainer.dpo_loss` and trl/trainer/kto_trainer.py has
`KTOTrainer.kto_loss`; later TRL moved KTO to trl.experimental and inlined the DPO loss).
agentrl's preference losses (agentrl/preference.py) are tested against these.

Copied verbatim: `DPOTrainer.dpo_loss` (trl/trainer/dpo_trainer.py), `KTOTrainer.kto_loss`
(trl/trainer/kto_trainer.py), `FDivergenceType` / `FDivergenceConstants` (trl/trainer/dpo_config.py),
`cap_exp` (trl/trainer/utils.py, with its helper get_exp_cap) and the one IPO line of
`DPOTrainer.concatenated_forward` (`all_logps = all_logps / loss_mask.sum(-1)`: TRL's IPO
compares per-token *average* log-probs). The methods stay methods of `self`: tests pass an object
with the attributes they read (beta, label_smoothing, reference_free, f_divergence_type,
accelerator, ...). Only imports are added at the top. Do not edit."""
# ruff: noqa
# fmt: off
from enum import Enum

import torch
import torch.nn.functional as F


# ---- trl/trainer/dpo_config.py ----
class FDivergenceType(Enum):
    """Types of f-divergence functions for DPO loss regularization.

    Attributes:
        REVERSE_KL: Reverse KL divergence.
        JS_DIVERGENCE: Jensen-Shannon divergence.
        ALPHA_DIVERGENCE: Alpha divergence.

    Examples:
        ```python
        >>> from trl.trainer.dpo_config import DPOConfig, FDivergenceType

        >>> config = DPOConfig(
        ...     f_divergence_type=FDivergenceType.ALPHA_DIVERGENCE,
        ...     f_alpha_divergence_coef=0.5,  # used only with ALPHA_DIVERGENCE
        ... )
        ```
    """

    REVERSE_KL = "reverse_kl"
    JS_DIVERGENCE = "js_divergence"
    ALPHA_DIVERGENCE = "alpha_divergence"


class FDivergenceConstants:
    """Constants for f-divergence types and their parameters.

    Attributes:
        ALPHA_DIVERGENCE_COEF_KEY (`str`): Key for the alpha divergence coefficient.
        ALPHA_DIVERGENCE_COEF_DEFAULT (`float`): Default value for the alpha divergence coefficient.
    """

    ALPHA_DIVERGENCE_COEF_KEY = "alpha_divergence_coef"
    ALPHA_DIVERGENCE_COEF_DEFAULT = 1.0



# ---- trl/trainer/utils.py ----
def get_exp_cap(value, decimal=4):
    """
    Get the exponent cap of a value. This is used to cap the exponent of a value to avoid overflow. The formula is :
    log(value.dtype.max) E.g. for float32 data type, the maximum exponent value is 88.7228 to 4 decimal points.

    Args:
        value (`torch.Tensor`):
            The input tensor to obtain the data type
        decimal (`int`):
            The number of decimal points of the output exponent cap. eg: direct calling exp(log(torch.float32.max))
            will result in inf so we cap the exponent to 88.7228 to avoid overflow.
    """
    vdtype_max = torch.zeros([1]).to(value.dtype) + torch.finfo(value.dtype).max
    vdtype_log_max = torch.log(vdtype_max).to(value.device)
    return torch.floor(vdtype_log_max * 10**decimal) / 10**decimal if decimal > 0 else vdtype_log_max


def cap_exp(value, cap=-1):
    # Cap the exponent value below the upper-bound to avoid overflow, before calling torch.exp
    cap = get_exp_cap(value) if cap < 0 else cap
    return torch.exp(torch.clamp(value, max=cap))



# ---- trl/trainer/dpo_trainer.py: DPOTrainer.concatenated_forward, the IPO normalisation ----
def ipo_normalised_logps(all_logps, loss_mask):
    """(wrapper added here) ``loss_mask``: [B, T] completion mask; TRL's line below, verbatim."""
    all_logps = all_logps / loss_mask.sum(-1)
    return all_logps


# ---- trl/trainer/dpo_trainer.py: DPOTrainer.dpo_loss ----
def dpo_loss(
    self,
    chosen_logps: torch.FloatTensor,
    rejected_logps: torch.FloatTensor,
    ref_chosen_logps: torch.FloatTensor,
    ref_rejected_logps: torch.FloatTensor,
    loss_type: str = "sigmoid",
    model_output: dict[str, torch.FloatTensor] = None,
) -> tuple[torch.FloatTensor, torch.FloatTensor, torch.FloatTensor]:
    """
    Compute the DPO loss for a batch of policy and reference model log probabilities.

    Args:
        chosen_logps (`torch.FloatTensor`):
            Log probabilities of the model for the chosen responses. Shape: `(batch_size,)`.
        rejected_logps (`torch.FloatTensor`):
            Log probabilities of the model for the rejected responses. Shape: `(batch_size,)`.
        ref_chosen_logps (`torch.FloatTensor`):
            Log probabilities of the reference model for the chosen responses. Shape: `(batch_size,)`.
        ref_rejected_logps (`torch.FloatTensor`):
            Log probabilities of the reference model for the rejected responses. Shape: `(batch_size,)`.
        loss_type (`str`, defaults to `"sigmoid"`):
            The type of loss to compute. One of:
            - `"sigmoid"`: Sigmoid loss from the original [DPO](https://huggingface.co/papers/2305.18290) paper.
            - `"hinge"`: Hinge loss on the normalized likelihood from the
              [SLiC](https://huggingface.co/papers/2305.10425) paper.
            - `"ipo"`: IPO loss from the [IPO](https://huggingface.co/papers/2310.12036) paper.
            - `"exo_pair"`: Pairwise EXO loss from the [EXO](https://huggingface.co/papers/2402.00856) paper.
            - `"nca_pair"`: Pairwise NCA loss from the [NCA](https://huggingface.co/papers/2402.05369) paper.
            - `"robust"`: Unbiased estimate of the DPO loss that is robust to preference noise from the [Robust
              DPO](https://huggingface.co/papers/2403.00409) paper.
            - `"bco_pair"`: Pairwise BCO loss from the [BCO](https://huggingface.co/papers/2404.04656) paper.
            - `"sppo_hard"`: SPPO loss with hard label from the [SPPO](https://huggingface.co/papers/2405.00675)
              paper.
            - `"aot"`: AOT loss for paired datasets from the [AOT](https://huggingface.co/papers/2406.05882) paper.
            - `"aot_pair"`: AOT loss for unpaired datasets from the [AOT](https://huggingface.co/papers/2406.05882)
              paper.
            - `"discopop"`: DiscoPOP (a.k.a Log-Ratio Modulated Loss, LRML) loss from the
              [DiscoPOP](https://huggingface.co/papers/2406.08414) paper.
            - `"apo_zero"`: APO-zero loss from the [APO](https://huggingface.co/papers/2408.06266) paper.
            - `"apo_down"`: APO-down loss from the [APO](https://huggingface.co/papers/2408.06266) paper.
            - `"sft"`: Negative log-likelihood loss (standard supervised fine-tuning loss).
        model_output (`dict[str, torch.FloatTensor]`, *optional*):
            The output of the model's forward pass. This is used to compute auxiliary losses if enabled.

    Returns:
        A tuple of three tensors: `(losses, chosen_rewards, rejected_rewards)`. The losses tensor contains the DPO
        loss for each example in the batch. The `chosen_rewards` and `rejected_rewards` tensors contain the rewards
        for the chosen and rejected responses, respectively.
    """
    device = self.accelerator.device

    # Get the log ratios for the chosen and rejected responses
    chosen_logratios = chosen_logps.to(device) - (not self.reference_free) * ref_chosen_logps.to(device)
    rejected_logratios = rejected_logps.to(device) - (not self.reference_free) * ref_rejected_logps.to(device)

    if self.f_divergence_type == FDivergenceType.ALPHA_DIVERGENCE:
        # The alpha-divergence formula: (1 - u^-alpha) / alpha
        # The divergence difference between the chosen and rejected sample is:
        #     (1 - u[w]^-alpha) / alpha - (1 - u[l]^-alpha) / alpha
        #        = (u[l]^-alpha - u[w]^-alpha) / alpha
        # where u[w] and u[l] are the policy/reference probability ratios
        # for the chosen and rejected samples, respectively.
        alpha_coef = FDivergenceConstants.ALPHA_DIVERGENCE_COEF_DEFAULT
        if self.f_divergence_params and FDivergenceConstants.ALPHA_DIVERGENCE_COEF_KEY in self.f_divergence_params:
            alpha_coef = float(self.f_divergence_params[FDivergenceConstants.ALPHA_DIVERGENCE_COEF_KEY])
        logits = (cap_exp(rejected_logratios * -alpha_coef) - cap_exp(chosen_logratios * -alpha_coef)) / alpha_coef
    else:
        logratios = chosen_logps - rejected_logps
        if self.reference_free:
            ref_logratios = torch.tensor([0], dtype=logratios.dtype, device=logratios.device)
        else:
            ref_logratios = ref_chosen_logps - ref_rejected_logps

        logratios = logratios.to(self.accelerator.device)
        ref_logratios = ref_logratios.to(self.accelerator.device)
        logits = logratios - ref_logratios

        if self.f_divergence_type == FDivergenceType.JS_DIVERGENCE:
            # The js-divergence formula: log(2 * u / (1 + u))
            # The divergence difference between the chosen and rejected sample is:
            #     log(2 * u[w] / (1 + u[w])) - log(2 * u[l] / (1 + u[l]))
            #       = log(u[w]) - log(u[l]) - (log(1 + u[w]) - log(1 + u[l]))
            # where u[w] and u[l] are the policy/reference probability ratios
            # for the chosen and rejected samples, respectively.
            logits -= F.softplus(chosen_logratios) - F.softplus(rejected_logratios)

    # The beta is a temperature parameter for the DPO loss, typically something in the range of 0.1 to 0.5.
    # We ignore the reference model as beta -> 0. The label_smoothing parameter encodes our uncertainty about the
    # labels and calculates a conservative DPO loss.
    if loss_type == "sigmoid":
        losses = (
            -F.logsigmoid(self.beta * logits) * (1 - self.label_smoothing)
            - F.logsigmoid(-self.beta * logits) * self.label_smoothing
        )

    elif loss_type == "robust":
        losses = (
            -F.logsigmoid(self.beta * logits) * (1 - self.label_smoothing)
            + F.logsigmoid(-self.beta * logits) * self.label_smoothing
        ) / (1 - 2 * self.label_smoothing)

    elif loss_type == "exo_pair":
        # eqn (16) of the EXO paper: https://huggingface.co/papers/2402.00856
        import math

        if self.label_smoothing == 0:
            self.label_smoothing = 1e-3
        losses = (self.beta * logits).sigmoid() * (
            F.logsigmoid(self.beta * logits) - math.log(1 - self.label_smoothing)
        ) + (-self.beta * logits).sigmoid() * (F.logsigmoid(-self.beta * logits) - math.log(self.label_smoothing))

    elif loss_type == "hinge":
        losses = torch.relu(1 - self.beta * logits)

    elif loss_type == "ipo":
        # eqn (17) of the paper where beta is the regularization parameter for the IPO loss, denoted by tau in the paper.
        losses = (logits - 1 / (2 * self.beta)) ** 2

    elif loss_type == "bco_pair":
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        chosen_rewards = self.beta * chosen_logratios
        rejected_rewards = self.beta * rejected_logratios
        rewards = torch.cat((chosen_rewards, rejected_rewards), 0).mean().detach()
        self.running.update(rewards)
        delta = self.running.mean
        losses = -F.logsigmoid((self.beta * chosen_logratios) - delta) - F.logsigmoid(
            -(self.beta * rejected_logratios - delta)
        )

    elif loss_type == "sppo_hard":
        # In the paper (https://huggingface.co/papers/2405.00675), SPPO employs a soft probability approach,
        # estimated using the PairRM score. The probability calculation is conducted outside of the trainer class.
        # The version described here is the hard probability version, where P in Equation (4.7) of Algorithm 1 is
        # set to 1 for the winner and 0 for the loser.
        a = chosen_logps - ref_chosen_logps
        b = rejected_logps - ref_rejected_logps
        losses = (a - 0.5 / self.beta) ** 2 + (b + 0.5 / self.beta) ** 2

    elif loss_type == "nca_pair":
        chosen_rewards = (chosen_logps - ref_chosen_logps) * self.beta
        rejected_rewards = (rejected_logps - ref_rejected_logps) * self.beta
        losses = (
            -F.logsigmoid(chosen_rewards)
            - 0.5 * F.logsigmoid(-chosen_rewards)
            - 0.5 * F.logsigmoid(-rejected_rewards)
        )

    elif loss_type == "aot_pair":
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        chosen_logratios_sorted, _ = torch.sort(chosen_logratios, dim=0)
        rejected_logratios_sorted, _ = torch.sort(rejected_logratios, dim=0)
        delta = chosen_logratios_sorted - rejected_logratios_sorted
        losses = (
            -F.logsigmoid(self.beta * delta) * (1 - self.label_smoothing)
            - F.logsigmoid(-self.beta * delta) * self.label_smoothing
        )

    elif loss_type == "aot":
        logratios = chosen_logps - rejected_logps
        ref_logratios = ref_chosen_logps - ref_rejected_logps
        logratios_sorted, _ = torch.sort(logratios, dim=0)
        ref_logratios_sorted, _ = torch.sort(ref_logratios, dim=0)
        delta = logratios_sorted - ref_logratios_sorted
        losses = (
            -F.logsigmoid(self.beta * delta) * (1 - self.label_smoothing)
            - F.logsigmoid(-self.beta * delta) * self.label_smoothing
        )

    elif loss_type == "apo_zero":
        # Eqn (7) of the APO paper (https://huggingface.co/papers/2408.06266)
        # Use this loss when you believe the chosen outputs are better than your model's default output
        losses_chosen = 1 - F.sigmoid(self.beta * chosen_logratios)  # Increase chosen likelihood
        losses_rejected = F.sigmoid(self.beta * rejected_logratios)  # Decrease rejected likelihood
        losses = losses_chosen + losses_rejected

    elif loss_type == "apo_down":
        # Eqn (8) of the APO paper (https://huggingface.co/papers/2408.06266)
        # Use this loss when you believe the chosen outputs are worse than your model's default output.
        # Decrease chosen likelihood and decrease rejected likelihood more
        losses_chosen = F.sigmoid(self.beta * chosen_logratios)
        losses_rejected = 1 - F.sigmoid(self.beta * (chosen_logratios - rejected_logratios))
        losses = losses_chosen + losses_rejected

    elif loss_type == "discopop":
        # Eqn (5) of the DiscoPOP paper (https://huggingface.co/papers/2406.08414)
        # This loss was discovered with LLM discovery
        logratios = chosen_logps - rejected_logps
        ref_logratios = ref_chosen_logps - ref_rejected_logps
        logits = logratios - ref_logratios
        logits = logits * self.beta
        # Modulate the mixing coefficient based on the log ratio magnitudes
        log_ratio_modulation = torch.sigmoid(logits / self.args.discopop_tau)
        logistic_component = -F.logsigmoid(logits)
        exp_component = torch.exp(-logits)
        # Blend between logistic and exponential component based on log ratio modulation
        losses = logistic_component * (1 - log_ratio_modulation) + exp_component * log_ratio_modulation

    elif loss_type == "sft":
        # SFT loss is the negative log likelihood loss on chosen responses
        # This acts as the generation loss component in MPO
        sft_loss = model_output["nll_loss"]
        # Create losses tensor with same shape as other losses (per-sample)
        batch_size = chosen_logps.shape[0]
        losses = sft_loss.expand(batch_size)
        # For SFT, we don't have preference rewards, so use zeros
        chosen_rewards = torch.zeros_like(chosen_logps)
        rejected_rewards = torch.zeros_like(rejected_logps)

    else:
        raise ValueError(
            f"Unknown loss type: {self.loss_type}. Should be one of ['sigmoid', 'hinge', 'ipo', 'exo_pair', "
            "'nca_pair', 'robust', 'bco_pair', 'sppo_hard', 'aot', 'aot_pair', 'discopop', 'apo_zero', "
            "'apo_down', 'sft']"
        )

    chosen_rewards = self.beta * (chosen_logps.to(device) - ref_chosen_logps.to(device)).detach()
    rejected_rewards = self.beta * (rejected_logps.to(device) - ref_rejected_logps.to(device)).detach()

    return losses, chosen_rewards, rejected_rewards


# ---- trl/trainer/kto_trainer.py: KTOTrainer.kto_loss ----
def kto_loss(
    self,
    policy_chosen_logps: torch.FloatTensor,
    policy_rejected_logps: torch.FloatTensor,
    policy_KL_logps: torch.FloatTensor,
    reference_chosen_logps: torch.FloatTensor,
    reference_rejected_logps: torch.FloatTensor,
    reference_KL_logps: torch.FloatTensor,
) -> tuple[torch.FloatTensor, torch.FloatTensor, torch.FloatTensor, torch.FloatTensor]:
    """Compute the KTO loss for a batch of policy and reference model log probabilities.

    Args:
        policy_chosen_logps:
            Log probabilities of the policy model for the chosen responses. Shape: (num(chosen) in batch_size,)
        policy_rejected_logps:
            Log probabilities of the policy model for the rejected responses. Shape: (num(rejected) in batch_size,)
        policy_KL_logps: Log probabilities of the policy model for the KL responses. Shape: (batch_size,)
        reference_chosen_logps:
            Log probabilities of the reference model for the chosen responses. Shape: (num(chosen) in batch_size,)
        reference_rejected_logps:
            Log probabilities of the reference model for the rejected responses. Shape: (num(rejected) in
            batch_size,)
        reference_KL_logps: Log probabilities of the reference model for the KL responses. Shape: (batch_size,)

    Returns:
        A tuple of four tensors: (losses, chosen_rewards, rejected_rewards, KL). The losses tensor contains the KTO
        loss for each example in the batch. The chosen_rewards and rejected_rewards tensors contain the rewards for
        the chosen and rejected responses, respectively. The KL tensor contains the detached KL divergence estimate
        between the policy and reference models.
    """
    if self.calculate_KL:
        kl = (policy_KL_logps - reference_KL_logps).mean().detach()
        kl = self.accelerator.gather_for_metrics(kl).mean().clamp(min=0)
    else:
        kl = torch.zeros(1).to(policy_chosen_logps.device)

    # Chosen losses
    if policy_chosen_logps.shape[0] != 0 or reference_chosen_logps.shape[0] != 0:
        chosen_logratios = policy_chosen_logps - reference_chosen_logps

        if self.loss_type == "kto":
            # Eqn (7) of the KTO paper (https://huggingface.co/papers/2402.01306)
            chosen_losses = 1 - F.sigmoid(self.beta * (chosen_logratios - kl))
        elif self.loss_type == "apo_zero_unpaired":
            # Unpaired variant of Eqn (7) of the APO paper (https://huggingface.co/papers/2408.06266)
            # Use this loss when you believe the chosen outputs are better than your model's default output
            chosen_losses = 1 - F.sigmoid(self.beta * chosen_logratios)

        chosen_rewards = self.beta * chosen_logratios.detach()

    else:
        # lists can't be empty -- if they are, then accelerate.gather will hang
        chosen_losses = torch.Tensor([]).to(self.accelerator.device)
        chosen_rewards = torch.Tensor([]).to(self.accelerator.device)

    # Rejected losses
    if policy_rejected_logps.shape[0] != 0 or reference_rejected_logps.shape[0] != 0:
        rejected_logratios = policy_rejected_logps - reference_rejected_logps

        if self.loss_type == "kto":
            rejected_losses = 1 - F.sigmoid(self.beta * (kl - rejected_logratios))
        elif self.loss_type == "apo_zero_unpaired":
            rejected_losses = F.sigmoid(self.beta * rejected_logratios)

        rejected_rewards = self.beta * rejected_logratios.detach()
    else:
        # lists can't be empty -- if they are, then accelerate.gather will hang
        rejected_losses = torch.Tensor([]).to(self.accelerator.device)
        rejected_rewards = torch.Tensor([]).to(self.accelerator.device)

    losses = torch.cat(
        (self.desirable_weight * chosen_losses, self.undesirable_weight * rejected_losses),
        0,
    )

    return losses, chosen_rewards, rejected_rewards, kl

