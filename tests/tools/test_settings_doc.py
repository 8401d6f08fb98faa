"""docs/configuration.md's table is the one ``python -m tools.settings_doc`` generates from
``inpaint.config.Settings``, so it cannot drift from the code."""

from __future__ import annotations

from tools import settings_doc
from tools.settings_doc import BEGIN, COMMAND, DOC, END, Settings


def test_the_committed_table_is_generated_from_config():
    text = DOC.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{DOC.name} keeps both marker lines"
    assert settings_doc.render(text) == text, (
        f"docs/configuration.md's table differs from inpaint/config.py: run `{COMMAND}` "
        "and commit docs/configuration.md"
    )


def test_every_setting_has_a_row_with_its_variables():
    table = settings_doc.table()
    assert len(table.splitlines()) == 2 + len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} needs description= (the table's meaning)"
        for env in settings_doc.env_names(name, field):
            assert f"`{env}`" in table


def test_names_defaults_and_bounds_are_read_from_the_fields():
    fields = Settings.model_fields
    assert settings_doc.env_names("steps", fields["steps"]) == ["INPAINT_STEPS"]
    assert settings_doc.env_names("bucket", fields["bucket"]) == [
        "INPAINT_BUCKET",
        "FIREBASE_STORAGE_BUCKET",
    ]
    assert settings_doc.default_text(fields["max_input_bytes"]) == "`41943040` (40 MiB)"
    assert settings_doc.default_text(fields["gguf_file"]) == "unset"
    assert settings_doc.default_text(fields["compile"]) == "`false`"
    assert settings_doc.default_text(fields["extra_prompts"]) == "`[]`"
    assert settings_doc.accepted_text(fields["steps"]) == "1\N{EN DASH}100"
    assert settings_doc.accepted_text(fields["lease_seconds"]) == "> 0.5, ≤ 3600"
    assert settings_doc.accepted_text(fields["dtype"]).startswith("`auto`, `bfloat16`")
    assert "Q8_0" in settings_doc.accepted_text(fields["quant"])


def test_check_reports_a_stale_table_and_the_command_fixes_it(tmp_path, capsys):
    doc = tmp_path / "configuration.md"
    doc.write_text(f"# title\n\n{BEGIN}\n| stale |\n{END}\n\nafter\n")
    assert settings_doc.main(["--check", "--file", str(doc)]) == 1
    assert COMMAND in capsys.readouterr().out
    assert settings_doc.main(["--file", str(doc)]) == 0
    assert settings_doc.main(["--check", "--file", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# title\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "`INPAINT_STEPS`" in text
