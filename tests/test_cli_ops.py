"""The op catalogue is printed from the specs: every op, every argument name."""
from dsport.core.cli import main
from dsport.core.spec import specs


def test_markdown_catalogue_lists_every_op_and_argument(capsys):
    assert main(["ops", "--markdown"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("`")[1].split("(")[0]: line for line in out.splitlines() if line.count("`") >= 2}
    assert set(rows) == set(specs())
    for name, spec in specs().items():
        assert all(a.name in rows[name] for a in spec.args), name
    assert "`rope(x [T, H, D], positions [T], freqs [D // 2], interleaved)`" in out  # no default pairing, on purpose
