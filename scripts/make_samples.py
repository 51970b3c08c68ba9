"""Regenerate the shipped samples from text that ships inside two registry packages.

    pip download chatterbot-corpus==1.3.3 gensim==4.4.0 --no-deps -d /tmp/wheels
    python scripts/make_samples.py --wheels /tmp/wheels

writes
- samples/queries/chatterbot.jsonl: the human-written questions of chatterbot-corpus's English
  conversations (BSD-3-Clause), rows {"text", "category"}, kept as written, duplicates included,
  so that the query stage's normalization and dedupe have real work to do;
- samples/documents/wikipedia.jsonl: the English Wikipedia articles of gensim's test dump
  (CC BY-SA 3.0, Wikipedia contributors), wiki markup stripped, rows {"doc_id", "title", "text"}.

The wheels are read as zip files, nothing is installed. This runs once on a developer's machine;
the outputs are committed, so nothing here runs at install time or in tests.
"""

from __future__ import annotations

import argparse
import bz2
import html
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
WIKI_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_ARTICLE_CHARS = 500  # shorter pages are stubs or leftovers of redirects

# ---------------------------------------------------------------------------------------------
# chatterbot-corpus questions

# A user turn counts as a question when it ends with "?" or opens with a wh-word: the corpus
# writes many questions without the mark ("what is chemistry", "WHAT IS BASKETBALL").
_WH_WORD = re.compile(r"(what|who|whom|whose|why|how|when|where|which)\b", re.IGNORECASE)


def is_question(text: str) -> bool:
    stripped = text.strip()
    return stripped.endswith("?") or bool(_WH_WORD.match(stripped))


def chatterbot_questions(wheel: Path) -> Iterator[dict[str, str]]:
    """The user (first) turn of every English conversation that is a question, file by file."""
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(n for n in archive.namelist() if re.fullmatch(r"chatterbot_corpus/data/english/\w+\.yml", n))
        for name in names:
            corpus = yaml.safe_load(archive.read(name))
            category = Path(name).stem
            for conversation in corpus.get("conversations", []):
                # One trivia entry is a bare string, not a [question, answer] list: not a turn pair.
                if isinstance(conversation, list) and conversation and isinstance(conversation[0], str):
                    if is_question(conversation[0]):
                        yield {"text": conversation[0], "category": category}


# ---------------------------------------------------------------------------------------------
# Wikipedia articles: wikitext -> plain text

_DROPPED_SECTIONS = {
    "references", "external links", "see also", "further reading", "notes", "bibliography",
    "sources", "footnotes", "citations", "notes and references", "works cited",
}  # fmt: skip
_DROPPED_LINK_NAMESPACES = {"file", "image", "category", "media"}
_LANGUAGE_LINK = re.compile(r"[a-z]{2,3}(-[a-z]+)*|simple")  # [[de:Anarchismus]] at the page end
_RANGE_WORDS = {"-", "–", "to", "and", "or", "by", "x", "×"}


def _template_text(body: str) -> str:
    """What an innermost template renders as: its text for a few inline templates, else nothing."""
    name, *params = [part.strip() for part in body.split("|")]
    positional = [p for p in params if "=" not in p]
    name = name.lower()
    if name in {"convert", "cvt"} and len(positional) >= 2:
        if positional[1] in _RANGE_WORDS and len(positional) >= 4:
            return f"{positional[0]} {positional[1]} {positional[2]} {positional[3]}"
        return f"{positional[0]} {positional[1]}"
    if positional and (name in {"lang", "transl", "nowrap", "small", "nihongo", "flag"} or name.startswith("lang-")):
        # lang/transl/lang-xx put the text last; the others first.
        return positional[-1] if name in {"lang", "transl"} or name.startswith("lang-") else positional[0]
    return ""


def _link_text(match: re.Match[str]) -> str:
    target, _, label = match.group(1).partition("|")
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    if prefix in _DROPPED_LINK_NAMESPACES or (_LANGUAGE_LINK.fullmatch(prefix) and not label):
        return ""
    text = label.rsplit("|", 1)[-1] if label else target.lstrip(":")
    return text + match.group(2)  # the link trail: [[dog]]s -> dogs


# Innermost templates and links: bodies holding no other template or link. Links and templates
# nest in both directions ({{small|[[Genitive|GEN]]}}, [[Edge of space|altitude of {{convert|..}}]]).
_TEMPLATE = re.compile(r"\{\{((?:(?!\{\{|\}\}|\[\[|\]\]).)*)\}\}", re.DOTALL)
_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]|\{\{|\}\}).)*)\]\]([a-z]*)", re.DOTALL)
_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.DOTALL)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*(?:\s+([^\]]*))?\]")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_DROPPED_ELEMENTS = re.compile(
    r"<(math|gallery|timeline|score|imagemap|syntaxhighlight|source|chem|nowiki)\b[^>]*>.*?</\1>", re.DOTALL | re.IGNORECASE
)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_HEADING = re.compile(r"(=+)\s*(.*?)\s*\1")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;:]?\s*\)")


def _unwind_links_and_templates(text: str) -> str:
    """Render innermost links and templates, alternately, until none is left."""
    while True:
        text, links = _LINK.subn(_link_text, text)
        text, templates = _TEMPLATE.subn(lambda m: _template_text(m.group(1)), text)
        if not links and not templates:
            return text


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of an article: templates, tables, refs, files, categories and tags removed,
    links replaced by their labels, headings kept as plain lines, reference sections dropped."""
    text = _COMMENT.sub("", wikitext)
    text = _REF.sub("", text)
    text = _DROPPED_ELEMENTS.sub("", text)
    text = _unwind_links_and_templates(text)
    count = 1
    while count:  # innermost tables first, so nested tables unwind
        text, count = _TABLE.subn("", text)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = re.sub(r"'{2,}", "", text)  # bold / italic quotes
    text = re.sub(r"__[A-Z]+__", "", text)  # magic words such as __NOTOC__
    text = html.unescape(text)

    lines: list[str] = []
    skipping_level = 0  # inside a dropped section of this heading level
    for raw in text.split("\n"):
        heading = _HEADING.fullmatch(raw.strip())
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
            if skipping_level and level > skipping_level:
                continue
            skipping_level = level if title.lower() in _DROPPED_SECTIONS else 0
            if not skipping_level:
                lines += ["", title]
            continue
        if skipping_level:
            continue
        line = re.sub(r"^[*#:;]+\s*", "", raw.strip())  # list and indent markers
        if line.startswith(("|", "!", "{", "}")):  # leftovers of malformed tables or templates
            continue
        line = _EMPTY_BRACKETS.sub("", line)
        line = re.sub(r"\s+([,.;:])", r"\1", re.sub(r"[ \t]+", " ", line)).strip()
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def wikipedia_articles(wheel: Path) -> Iterator[dict[str, str]]:
    """Article rows from the dump in gensim's test data: main namespace, no redirects, not stubs."""
    with zipfile.ZipFile(wheel) as archive:
        dump = io.BytesIO(bz2.decompress(archive.read(WIKI_DUMP)))
    for _, element in ElementTree.iterparse(dump):
        if element.tag.rsplit("}", 1)[-1] != "page":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child for child in element}
        wikitext = next((e.text for e in element.iter() if e.tag.endswith("}text")), None) or ""
        # Disambiguation pages are link lists, not prose to write instructions about.
        title = fields["title"].text
        if fields["ns"].text == "0" and "redirect" not in fields and not title.endswith("(disambiguation)"):
            text = wikitext_to_text(wikitext)
            if len(text) >= MIN_ARTICLE_CHARS:
                yield {"doc_id": f"enwiki-{fields['id'].text}", "title": title, "text": text}
        element.clear()


def write_jsonl(rows: Iterator[dict[str, str]], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder holding the two downloaded wheels")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "samples", help="samples folder to write")
    args = parser.parse_args()
    (chatterbot_wheel,) = args.wheels.glob("chatterbot_corpus-*.whl")
    (gensim_wheel,) = args.wheels.glob("gensim-*.whl")
    queries = write_jsonl(chatterbot_questions(chatterbot_wheel), args.out / "queries" / "chatterbot.jsonl")
    articles = write_jsonl(wikipedia_articles(gensim_wheel), args.out / "documents" / "wikipedia.jsonl")
    print(f"{queries} questions from {chatterbot_wheel.name}, {articles} articles from {gensim_wheel.name}")


if __name__ == "__main__":
    main()
