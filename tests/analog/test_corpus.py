"""Ingestion of every supported format, broken files, cleaning and duplicate removal."""

from __future__ import annotations

import re

import pytest

from circuitlab.analog.corpus import SHIPPED, CorpusConfig, ingest
from circuitlab.analog.corpus.clean import clean_text, drop_page_furniture
from circuitlab.core.errors import CircuitlabError


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF, one text line per entry, Helvetica; byte offsets are exact."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for lines in pages:
        stream = (
            "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        content = len(objects)
        objects.append(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Contents {content} 0 R /Resources << /Font << /F1 FONT 0 R >> >> >>"
        )
        kids.append(len(objects))
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    font = len(objects)
    objects = [o.replace("FONT", str(font)) for o in objects]
    objects[1] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    )
    out = b"%PDF-1.4\n"
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


SML = """<chapter>
<chaptertitle>OPERATIONAL AMPLIFIERS</chaptertitle>
<section>
<sectiontitle>Negative feedback</sectiontitle>
<comment>editor note: redraw figure</comment>
<para>
Connecting the output of an op-amp to its inverting input is called <italic>negative
feedback</italic>; the gain A<subscript>V</subscript> falls to 1 with a 10 k<OMEGA> load \
(Figure<ref>03100.png below</ref>).
</para>
<image>03100.png<caption>A voltage follower</caption></image>
<index>Feedback, negative</index>
<literal>
v1 1 0 dc 5
.end
</literal>
<itemize>
<item><bold>REVIEW:</bold></item>
<item>A voltage follower has a gain of exactly one.</item>
</itemize>
</section>
</chapter>
"""
MARKDOWN = """---
title: notes
---
# Filters

Intro text about filters and their uses in audio circuits.

## Low-pass

A **low-pass** filter passes low frequen-
cies and blocks high ones. ![bode](bode.png) See [the notes](http://x.org).

```
code that is not prose
```
"""
HTML = """<html><head><title>t</title><script>var x = "no";</script></head><body>
<nav>Home | About | Contact</nav>
<h1>Diodes</h1><p>A diode conducts in one direction only.</p>
<h2>Zener diodes</h2><p>A zener diode regulates voltage in reverse breakdown.</p>
<ul><li>Zener voltage</li><li>Power rating</li></ul>
<footer>Copyright 2024 nobody</footer></body></html>
"""


def check_spans(corpus):
    docs = {d.id: d for d in corpus.documents}
    for section in corpus.sections:
        start, end = section.span
        assert docs[section.doc].text[start:end] == section.text


def test_every_format_becomes_clean_sections_with_provenance(tmp_path):
    (tmp_path / "ch.sml").write_text(SML)
    (tmp_path / "notes.md").write_text(MARKDOWN)
    (tmp_path / "page.html").write_text(HTML)
    (tmp_path / "plain.txt").write_text("A resistor obeys Ohm's law:\nV = I R across it.\n")
    (tmp_path / "book.pdf").write_bytes(
        make_pdf(
            [
                ["Bandgap references", "combine two voltages.", "1"],
                ["A bandgap reference cancels", "temperature drift.", "2"],
            ]
        )
    )
    corpus = ingest(tmp_path)
    assert corpus.skipped == []
    by_doc = {}
    for s in corpus.sections:
        by_doc.setdefault(s.doc, []).append(s)
    assert set(by_doc) == {"ch.sml", "notes.md", "page.html", "plain.txt", "book.pdf"}
    check_spans(corpus)

    (sml,) = by_doc["ch.sml"]
    assert sml.path == ("Operational Amplifiers", "Negative feedback")
    assert "is called negative feedback; the gain A_V falls to 1 with a 10 kΩ load." in sml.text
    assert "- A voltage follower has a gain of exactly one." in sml.text
    for junk in ("<", "editor note", "03100", "Feedback, negative", ".end", "Figure"):
        assert junk not in sml.text
    raw = SML
    assert raw[sml.source_span[0] :].startswith("<sectiontitle>Negative feedback")

    md = {s.path: s.text for s in by_doc["notes.md"]}
    assert md[("Filters",)] == "Intro text about filters and their uses in audio circuits."
    low = md[("Filters", "Low-pass")]
    assert low == "A low-pass filter passes low frequencies and blocks high ones. See the notes."

    html = {s.path: s.text for s in by_doc["page.html"]}
    assert html[("Diodes",)] == "A diode conducts in one direction only."
    zener = html[("Diodes", "Zener diodes")]
    assert "regulates voltage" in zener and "- Zener voltage" in zener
    assert not any("Copyright" in t or "Home" in t or "var x" in t for t in html.values())

    assert by_doc["plain.txt"][0].text == "A resistor obeys Ohm's law: V = I R across it."
    (pdf,) = by_doc["book.pdf"]
    assert "Bandgap references" in pdf.text and "temperature drift" in pdf.text
    assert pdf.source_unit == "page" and pdf.source_span == (1, 2)
    assert not re.search(r"(^|\n)\s*[12]\s*($|\n)", pdf.text)  # page numbers dropped


def test_unreadable_files_are_reported_and_the_rest_is_kept(tmp_path):
    (tmp_path / "good.md").write_text("# Op-amps\n\nAn op-amp has a very high open-loop gain.\n")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    (tmp_path / "corrupt.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf at all")
    (tmp_path / "latin1.md").write_bytes("# R\n\n10 k\xb5F capacitor".encode("latin-1"))
    (tmp_path / "slides.pptx").write_bytes(b"PK\x03\x04zip")
    corpus = ingest(tmp_path)
    reasons = {s["file"]: s["reason"] for s in corpus.skipped}
    assert set(reasons) == {"binary.txt", "corrupt.pdf", "latin1.md", "slides.pptx"}
    assert "binary" in reasons["binary.txt"]
    assert "PDF" in reasons["corrupt.pdf"]
    assert "not UTF-8" in reasons["latin1.md"] and "0xb5" in reasons["latin1.md"]
    assert "unsupported" in reasons["slides.pptx"]
    assert [s.text for s in corpus.sections] == ["An op-amp has a very high open-loop gain."]
    assert corpus.summary()["skipped"] == corpus.skipped


def test_missing_or_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(CircuitlabError, match="does not exist"):
        ingest(tmp_path / "nope")
    with pytest.raises(CircuitlabError, match="holds no documents"):
        ingest(tmp_path)


PARAGRAPH = (
    "The common-mode rejection ratio of a differential amplifier compares its gain for "
    "differential signals with its gain for signals common to both inputs, and a high "
    "ratio means that noise picked up equally by both input wires is strongly attenuated "
    "while the wanted difference signal is amplified by the full differential gain."
)
OTHER = (
    "Slew rate is the fastest rate of change of output voltage an operational amplifier "
    "can produce, set by the current available to charge its internal compensation "
    "capacitor, and it limits the amplitude of sine waves at high frequencies."
)


def test_exact_and_near_duplicates_are_dropped_with_provenance(tmp_path):
    near = PARAGRAPH.replace("strongly attenuated", "heavily attenuated").upper()
    (tmp_path / "a.md").write_text(f"# CMRR\n\n{PARAGRAPH}\n\n{OTHER}\n")
    (tmp_path / "b.md").write_text(f"# Copy\n\n{PARAGRAPH}\n")
    (tmp_path / "c.md").write_text(f"# Edited\n\n  {near}\n\nA short line.\n")
    corpus = ingest(tmp_path)
    kinds = {d["file"]: d["kind"] for d in corpus.duplicates}
    assert kinds == {"b.md": "exact", "c.md": "near"}
    assert all(d["duplicate_of"].startswith("a.md#") for d in corpus.duplicates)
    near_record = next(d for d in corpus.duplicates if d["kind"] == "near")
    assert 0.85 <= near_record["similarity"] < 1.0
    texts = [s.text for s in corpus.sections]
    assert texts == [f"{PARAGRAPH}\n\n{OTHER}", "A short line."]  # b.md left empty: dropped
    assert corpus.summary()["near_duplicates_dropped"] == 1
    strict = ingest(tmp_path, CorpusConfig(near_duplicate=1.0))
    assert [d["kind"] for d in strict.duplicates] == ["exact"]


def test_cleaning_joins_hyphenation_and_wraps_and_drops_page_furniture():
    assert clean_text("an ampli-\nfier with\nhard   wraps\n\n\n- item one\n- item two") == (
        "an amplifier with hard wraps\n\n- item one\n- item two"
    )
    bodies = ["gain is output over input", "feedback lowers gain", "poles set bandwidth",
              "noise adds in power", "offsets drift with heat"]  # fmt: skip
    pages = [f"Analog Notes, chapter {i}\n{b}\nmore on {b}\n{i}" for i, b in enumerate(bodies)]
    assert drop_page_furniture(pages) == [f"{b}\nmore on {b}" for b in bodies]


def test_shipped_textbook_ingests_without_markup_and_without_its_licence():
    corpus = ingest(SHIPPED)
    assert len(corpus.documents) == 9 and corpus.skipped == []
    assert {"LICENSE-DSL.sml", "NOTICE.md"} <= set(corpus.excluded)
    text = "\n".join(d.text for d in corpus.documents)
    assert not re.search(r"</?[a-z]+>", text)
    assert "Ω" in text and "operational amplifier" in text.lower()
    assert not any(s.path[-1] == "Contributors" for s in corpus.sections)
    check_spans(corpus)
