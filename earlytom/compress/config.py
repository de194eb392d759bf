"""The EarlyTom hyper-parameters, one frozen value shared by every backend and stored in the manifest."""

from dataclasses import asdict, dataclass

from earlytom.compress.checks import check_range

# Threshold defaults. The primer's worked example has adjacent similarities s = (0.92, 0.85, 0.78) for
# one still shot: its smoothed similarity never drops below 0.82, and its middle pair (s = 0.85 > 0.78)
# is a local peak that should merge. tau_seg = 0.75 keeps such a shot in one segment while a scene cut
# (similarity falling to ~0.3-0.5, which pulls the alpha = 0.6 EMA well under 0.75) opens a new one;
# tau_merge = 0.80 sits above tau_seg so that only frames more alike than a segment's cohesion merge.
DEFAULT_ALPHA = 0.6
DEFAULT_TAU_SEG = 0.75
DEFAULT_TAU_MERGE = 0.80
DEFAULT_RETAIN_RATIO = 0.15


@dataclass(frozen=True)
class EarlyTomConfig:
    """EarlyTom parameters.

    alpha: EMA weight of the newest similarity, in (0, 1].
    tau_seg: a segment boundary lies after frame t iff the EMA e_t < tau_seg, in [-1, 1].
    tau_merge: a middle frame merges with its successor iff s_i > tau_merge (and is a local peak), in [-1, 1].
    retain_ratio: the decoder receives round(retain_ratio * B * T) visual tokens, in (0, 1].
    """

    alpha: float = DEFAULT_ALPHA
    tau_seg: float = DEFAULT_TAU_SEG
    tau_merge: float = DEFAULT_TAU_MERGE
    retain_ratio: float = DEFAULT_RETAIN_RATIO

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, 0.0, 1.0, low_open=True)
        check_range("tau_seg", self.tau_seg, -1.0, 1.0)
        check_range("tau_merge", self.tau_merge, -1.0, 1.0)
        check_range("retain_ratio", self.retain_ratio, 0.0, 1.0, low_open=True)

    def to_dict(self) -> dict:
        return asdict(self)
