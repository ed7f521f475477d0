"""zstd over multifd, chosen by the forecast (preflight.forecast.choose_compression)."""

from __future__ import annotations

import pytest

from libvirt_vmotion.converge.machine import stream_policy
from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.model import Compression, MeasuredContext
from libvirt_vmotion.policy import MigrationPolicy
from libvirt_vmotion.preflight.forecast import (
    Forecast,
    ForecastInputs,
    RateOrigin,
    Strategy,
    choose_compression,
    forecast,
)


def fc(*, bandwidth: float, source: str, dirty: float = 5.0) -> Forecast:
    return forecast(
        ForecastInputs(
            memory_mib=200.0,
            dirty_rate_mib_s=dirty,
            bandwidth_mib_s=bandwidth,
            max_downtime_ms=500,
            bandwidth_source=source,
            bandwidth_origin=RateOrigin(source.split(maxsplit=1)[0].rstrip(":")),
        )
    )


@pytest.mark.parametrize(
    ("bandwidth", "source"),
    [(50.0, "cap"), (110.0, "link measured 10.77.0.1 -> 10.77.0.2: 110 MiB/s")],
)
def test_auto_compresses_where_the_link_limits_a_converging_pre_copy(
    bandwidth: float, source: str
) -> None:
    chosen = choose_compression(
        Compression.AUTO, fc(bandwidth=bandwidth, source=source), xbzrle=False
    )
    assert chosen.compress
    assert "the link is the limit" in chosen.reason


@pytest.mark.parametrize(
    ("forecast_", "why"),
    [
        (fc(bandwidth=80.0, source="learned: median of the last 2 migration(s)"), "the sender"),
        (fc(bandwidth=1000.0, source="link measured a -> b: 1000 MiB/s"), "the sender"),
        (fc(bandwidth=50.0, source="cap", dirty=60.0), "post-copy"),
        (None, "no forecast"),
    ],
)
def test_auto_leaves_it_off_where_it_cannot_help_or_would_cost_post_copy(
    forecast_: Forecast | None, why: str
) -> None:
    chosen = choose_compression(Compression.AUTO, forecast_, xbzrle=False)
    assert not chosen.compress
    assert why in chosen.reason


def test_the_decision_reads_where_the_rate_comes_from_not_how_it_is_worded() -> None:
    worded_like_a_cap = forecast(
        ForecastInputs(
            memory_mib=200.0, dirty_rate_mib_s=5.0, bandwidth_mib_s=50.0, max_downtime_ms=500,
            bandwidth_source="cap-like words", bandwidth_origin=RateOrigin.LEARNED,
        )
    )  # fmt: skip
    assert not choose_compression(Compression.AUTO, worded_like_a_cap, xbzrle=False).compress


def test_a_host_with_libvirt_before_9_4_gets_no_compression_whatever_is_asked() -> None:
    link_bound = fc(bandwidth=50.0, source="cap")
    for mode in (Compression.AUTO, Compression.ZSTD):
        chosen = choose_compression(mode, link_bound, xbzrle=False, oldest_libvirt=9_000_000)
        assert not chosen.compress
        assert "older than 9.4" in chosen.reason  # check and migrate print it before moving
    assert choose_compression(
        Compression.AUTO, link_bound, xbzrle=False, oldest_libvirt=11_003_000
    ).compress


def test_the_users_choice_wins() -> None:
    busy = fc(bandwidth=50.0, source="cap", dirty=60.0)
    assert busy.strategy is Strategy.POSTCOPY
    assert choose_compression(Compression.ZSTD, busy, xbzrle=False).compress
    assert not choose_compression(
        Compression.NONE, fc(bandwidth=50, source="cap"), xbzrle=False
    ).compress
    assert not choose_compression(
        Compression.AUTO, fc(bandwidth=50, source="cap"), xbzrle=True
    ).compress
    with pytest.raises(UsageError, match="xbzrle and compression zstd"):
        MigrationPolicy(xbzrle=True, compression=Compression.ZSTD)


def test_a_compressed_stream_uses_two_streams_and_gives_up_post_copy() -> None:
    policy = MigrationPolicy()
    compressed = stream_policy(policy, MeasuredContext(compress=True, compression_reason="x"))
    assert compressed.compression is Compression.ZSTD
    assert compressed.parallel_connections == 2
    assert not compressed.allow_postcopy
    plain = stream_policy(policy, MeasuredContext())
    assert plain.compression is Compression.NONE
    assert plain.allow_postcopy
    assert plain.parallel_connections == 0
