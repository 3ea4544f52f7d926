"""``reproduce`` sections of this pillar (importing this module registers them)."""

from __future__ import annotations

from sparseprior.common.results import register_section


@register_section("compress", order=50, summary="compression into a packed file")
def compress_section(run, mode, device):
    from sparseprior.compress.experiments import compress_section as run_section

    return run_section(run, mode, device)
