"""Typed configurations. Each dataclass documents its fields; the CLI builds its --help from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def default_exit_every(num_layers: int) -> int:
    """The paper's spacing of 5 on models of 25 layers or more (its 28–36-layer models), else L // 6 so that a
    shallow model still has about five exits (every layer on a 6-layer model)."""
    return 5 if num_layers >= 25 else max(1, num_layers // 6)


@dataclass
class ExitConfig:
    """Where the exit heads sit and how the LoRA adapter is shaped.

    Layer convention: layer ℓ ∈ 1..L names the residual stream after ℓ decoder layers; an exit "at 5"
    reads the state after the 5th layer; "no exit" is L.
    """

    exit_layers: list[int] | None = None
    """Explicit exit layers (1..L-1). None: every `exit_every` layers below the last."""
    exit_every: int | None = None
    """Spacing of the default exit layers: 5 → 5, 10, 15, … < L. None: :func:`default_exit_every`."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    head_init_bias: float = -6.0
    """Initial bias of every exit head (weights start at zero): σ(−6) ≈ 0.25% exit chance per layer."""

    def __post_init__(self) -> None:
        if self.exit_every is not None and self.exit_every < 1:
            raise ValueError(f"exit_every must be >= 1, got {self.exit_every}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def resolve_layers(self, num_layers: int) -> list[int]:
        """The exit layers for a model with `num_layers` decoder layers, validated."""
        if self.exit_layers is None:
            every = self.exit_every or default_exit_every(num_layers)
            layers = list(range(every, num_layers, every))
        else:
            layers = sorted(set(int(x) for x in self.exit_layers))
        if not layers:
            raise ValueError(f"no exit layers below the last layer {num_layers} (exit_every={self.exit_every})")
        bad = [x for x in layers if not 1 <= x < num_layers]
        if bad:
            raise ValueError(
                f"exit layers must lie in 1..{num_layers - 1} (layer {num_layers} is 'no exit'); got {bad}"
            )
        return layers

    def to_dict(self) -> dict:
        return asdict(self)
