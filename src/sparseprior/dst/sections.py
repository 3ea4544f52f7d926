"""``reproduce`` sections of this pillar (importing this module registers them)."""

from __future__ import annotations

from sparseprior.common.results import register_section


@register_section("dst", order=40, summary="dynamic sparse training")
def dst_section(run, mode, device):
    from sparseprior.dst.experiments import dst_section as run_section

    return run_section(run, mode, device)
