"""Where the pruning modules sit by default: the paper's placement scaled to a decoder's depth."""

from __future__ import annotations

# The paper's placement for LLaVA-1.5-7B: modules after decoder layers 1, 8 and 16 of 32.
PAPER_LAYER_FRACTIONS: tuple[float, ...] = (1 / 32, 8 / 32, 16 / 32)


def default_layers(num_layers: int, num_modules: int) -> list[int]:
    """Module positions (decoder layers before each module) for a decoder of depth `num_layers`.

    Scales the paper's placement (1, 8, 16 of 32) to the depth, rounds, and pushes collisions apart:
    32 -> [1, 8, 16], 6 -> [1, 2, 3], 40 -> [1, 10, 20]. Other module counts spread evenly up to
    half depth after a first module at 1/32 of it.

    Raises:
        ValueError: the decoder is too shallow for `num_modules` modules.
    """
    if num_layers < num_modules + 1:
        raise ValueError(
            f"A language model with {num_layers} decoder layers is too shallow for "
            f"num_modules={num_modules}: it needs at least {num_modules + 1} layers. Lower num_modules or "
            "pass explicit `layers`."
        )
    fractions = (
        PAPER_LAYER_FRACTIONS
        if num_modules == len(PAPER_LAYER_FRACTIONS)
        else tuple((i + 1) / (2 * num_modules) if i else 1 / 32 for i in range(num_modules))
    )
    positions: list[int] = []
    for f in fractions:
        p = max(1, round(f * num_layers))
        if positions:
            p = max(p, positions[-1] + 1)
        positions.append(p)
    # pull the tail back inside the depth if pushing collisions apart overflowed it
    for i in range(len(positions) - 1, -1, -1):
        positions[i] = min(positions[i], num_layers - 1 - (len(positions) - 1 - i))
    return positions
