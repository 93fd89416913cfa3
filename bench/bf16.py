"""bfloat16 beside float32 (CAPTIONER_DTYPE=bfloat16), where the CPU has native bfloat16: the service's
throughput at saturation, its share of a bfloat16 ceiling (the model's kernels replayed in bfloat16), and
how many photos get the float32 title."""

from __future__ import annotations

from dataclasses import dataclass

from bench.ceiling import Ceiling
from bench.measure import SaturationResult

DTYPE = "bfloat16"


@dataclass(frozen=True)
class Bf16Result:
    ceiling: Ceiling  # in bfloat16
    saturation: SaturationResult
    same_titles: int  # photos whose bf16 title equals the float32 one
    photos: int

    @property
    def service_img_s(self) -> float:
        return self.saturation.img_s

    @property
    def ceiling_share(self) -> float:
        return self.ceiling.share(self.saturation.img_s)
