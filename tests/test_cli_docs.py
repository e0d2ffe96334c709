"""docs/cli.md is the app's own help; regenerate with `python -m mad_pipeline.cli.docs > docs/cli.md`."""

from conftest import REPO
from mad_pipeline.cli.docs import render


def test_cli_reference_is_in_sync():
    assert (REPO / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `python -m mad_pipeline.cli.docs > docs/cli.md`")


def test_every_command_help_has_an_example():
    text = render()
    for section in text.split("\n## ")[1:]:
        title = section.splitlines()[0]
        if title.strip("`") in ("mad store", "mad datasets", "mad teacher"):
            continue  # groups list their commands
        assert "mad " in section.split("```text", 1)[1].split("Usage:", 1)[1].split("\n", 2)[2] or \
            "Example" in section, f"{title} help shows no example"
