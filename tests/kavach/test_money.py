import pytest

from kavach import fmt_usd, to_nanos


def test_to_nanos_is_exact_and_rounds_up() -> None:
    assert to_nanos(50) == 50_000_000_000
    assert to_nanos("0.0000000001") == 1  # a tenth of a nano still counts
    assert to_nanos(0.1) == 100_000_000  # no binary float noise
    with pytest.raises(TypeError):
        to_nanos(True)


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "$0.00"),
        (800_000_000, "$0.80"),
        (49_840_000, "$0.04984"),  # not rounded up to look like the $0.05 limit
        (1_234_500_000_000, "$1,234.50"),
        (125_000, "$0.000125"),
        (-5_000_000, "-$0.005"),
    ],
)
def test_fmt_usd(nanos: int, text: str) -> None:
    assert fmt_usd(nanos) == text
