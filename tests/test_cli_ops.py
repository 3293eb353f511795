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


def test_readme_op_table_is_the_catalogue(capsys):
    # the README's table is printed by `dsport ops --markdown`; a spec change must show there too
    import pathlib

    assert main(["ops", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    table = table[table.index("| family"):]
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table in readme, "README.md's op table differs from `dsport ops --markdown`: paste the command's output"
