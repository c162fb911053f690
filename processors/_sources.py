"""A local document collection: files chunked at headings and paragraphs, ranked with BM25.

The collection is read the first time it is searched and kept for the life of the process.
Every search first lists the files again (name, size, modification time): when anything
changed (a file added, edited or removed), the collection is read and indexed again, so
editing a policy document takes effect on the next step without a restart. Ranking is Okapi
BM25 (Lucene's variant) from ``bm25s``, over words lower-cased, stripped of common English
stop words and of common suffixes, so "refunds" finds "refunded".
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from topics import ConfigurationError

__all__ = ["LocalCollection", "Passage", "chunk_document", "tokenize"]

_WORD = re.compile(r"[^\W_]+")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MARKDOWN = frozenset({".md", ".markdown"})


@dataclass(frozen=True)
class Passage:
    """One chunk of one document.

    Attributes:
        id: ``<path>#<index>``: the file's path under the collection and the chunk's number.
        text: The chunk, with its heading line.
        path: The file's path under the collection, with '/' separators.
        title: The document's title: its first level-1 heading, else the file name.
        heading: The heading of the chunk's section ('' before the first heading).
        index: The chunk's number within its document, from 0.
    """

    id: str
    text: str
    path: str
    title: str
    heading: str
    index: int

    def document(self, score: float, source: str) -> dict[str, JsonValue]:
        """The passage as a retrieve step's output document."""
        return {
            "id": self.id,
            "text": self.text,
            "score": score,
            "source": source,
            "metadata": {
                "path": self.path,
                "title": self.title,
                "heading": self.heading,
                "chunk": self.index,
            },
        }


@dataclass(frozen=True)
class _Index:
    snapshot: tuple[tuple[str, int, int], ...]
    passages: tuple[Passage, ...]
    ranker: Any = field(repr=False)  # bm25s.BM25, or None for an empty collection


class LocalCollection:
    """The documents of one ``local`` source, indexed on first use and when files change.

    Thread-safe: searches run in worker threads, and one of them re-indexes at a time.

    Args:
        root: The directory.
        glob: Which files under it are documents (hidden files and directories are skipped).
        max_chunk_chars: Largest chunk, in characters.
    """

    def __init__(self, root: Path, glob: str = "**/*.md", max_chunk_chars: int = 1200) -> None:
        self._root = root
        self._glob = glob
        self._max_chunk_chars = max_chunk_chars
        self._lock = threading.Lock()
        self._index: _Index | None = None

    def search(self, query: str, top_k: int) -> list[tuple[Passage, float]]:
        """The ``top_k`` passages that match ``query`` best, best first, with their scores.

        Passages that share no word with the query are left out. Blocking (file system and
        ranking): call it from a worker thread.

        Raises:
            ConfigurationError: The directory is gone.
        """
        index = self._current()
        words = [w for w in tokenize(query) if w in index.ranker.vocab_dict] if index.ranker else []
        if not words:
            return []
        scores = index.ranker.get_scores(words)
        ranked = sorted(
            (i for i in range(len(index.passages)) if scores[i] > 0),
            key=lambda i: (-float(scores[i]), i),
        )
        return [(index.passages[i], round(float(scores[i]), 4)) for i in ranked[:top_k]]

    @property
    def passages(self) -> tuple[Passage, ...]:
        """Every passage of the collection as it is now (re-indexed if files changed)."""
        return self._current().passages

    def _current(self) -> _Index:
        snapshot = self._snapshot()
        index = self._index
        if index is not None and index.snapshot == snapshot:
            return index
        with self._lock:
            index = self._index
            if index is None or index.snapshot != snapshot:
                index = self._build(snapshot)
                self._index = index
            return index

    def _snapshot(self) -> tuple[tuple[str, int, int], ...]:
        if not self._root.is_dir():
            raise ConfigurationError(f"document collection {self._root} is not a directory")
        root = self._root.resolve()
        files = []
        for path in self._root.glob(self._glob):
            relative = path.relative_to(self._root)
            if any(part.startswith(".") for part in relative.parts):
                continue
            try:
                if not path.is_file() or not path.resolve().is_relative_to(root):
                    continue  # a link out of the collection is not part of it
                stat = path.stat()
            except OSError:
                continue  # removed while listing: the next search sees the change
            files.append((relative.as_posix(), stat.st_mtime_ns, stat.st_size))
        return tuple(sorted(files))

    def _build(self, snapshot: tuple[tuple[str, int, int], ...]) -> _Index:
        passages: list[Passage] = []
        for relative, _, _ in snapshot:
            path = self._root / relative
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            title, chunks = chunk_document(
                text, self._max_chunk_chars, markdown=path.suffix.lower() in _MARKDOWN
            )
            title = title or path.stem.replace("-", " ").replace("_", " ")
            for index, (heading, chunk) in enumerate(chunks):
                passages.append(
                    Passage(f"{relative}#{index}", chunk, relative, title, heading, index)
                )
        if not passages:
            return _Index(snapshot, (), None)
        ranker = _bm25s().BM25()
        # The title and heading count as words of every chunk under them.
        ranker.index(
            [tokenize(f"{p.title}\n{p.heading}\n{p.text}") for p in passages], show_progress=False
        )
        return _Index(snapshot, tuple(passages), ranker)


def chunk_document(
    text: str, max_chars: int, *, markdown: bool = True
) -> tuple[str, list[tuple[str, str]]]:
    """A document cut into chunks of at most ``max_chars`` characters.

    Markdown is cut at every heading (outside fenced code), then each section's paragraphs
    are packed into chunks that start with the section's heading line; a paragraph longer
    than a chunk is cut at sentence ends, then at spaces. Plain text is cut at paragraphs.

    Returns:
        The document's title (its first level-1 heading, '' if none) and the chunks, each as
        (section heading, chunk text).
    """
    title = ""
    sections: list[tuple[str, str, list[str]]] = [("", "", [])]  # heading, heading line, lines
    fenced = False
    for line in text.splitlines():
        if markdown and _FENCE.match(line):
            fenced = not fenced
        match = None if fenced or not markdown else _HEADING.match(line)
        if match:
            if not title and len(match.group(1)) == 1:
                title = match.group(2)
            sections.append((match.group(2), line.strip(), []))
        else:
            sections[-1][2].append(line)
    chunks: list[tuple[str, str]] = []
    for heading, heading_line, lines in sections:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", "\n".join(lines)) if p.strip()]
        if not paragraphs:
            continue
        room = max_chars - len(heading_line) - 2 if heading_line else max_chars
        room = max(room, max_chars // 2)
        current: list[str] = []
        for paragraph in _pieces(paragraphs, room):
            if current and len("\n\n".join([*current, paragraph])) > room:
                chunks.append((heading, _join(heading_line, current)))
                current = []
            current.append(paragraph)
        if current:
            chunks.append((heading, _join(heading_line, current)))
    return title, chunks


def _join(heading_line: str, paragraphs: list[str]) -> str:
    return "\n\n".join([heading_line, *paragraphs] if heading_line else paragraphs)


def _pieces(paragraphs: list[str], room: int) -> list[str]:
    """Paragraphs, each longer than ``room`` cut at sentence ends, then at spaces."""
    pieces: list[str] = []
    for paragraph in paragraphs:
        if len(paragraph) <= room:
            pieces.append(paragraph)
            continue
        current = ""
        for sentence in _SENTENCE_END.split(paragraph):
            while len(sentence) > room:
                cut = sentence.rfind(" ", 0, room)
                cut = cut if cut > 0 else room
                if current:
                    pieces.append(current)
                    current = ""
                pieces.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            if current and len(current) + 1 + len(sentence) > room:
                pieces.append(current)
                current = ""
            current = f"{current} {sentence}" if current else sentence
        if current:
            pieces.append(current)
    return pieces


def tokenize(text: str) -> list[str]:
    """The words BM25 ranks by: lower-cased, without stop words, with suffixes stripped."""
    stopwords = _stopwords()
    words = (w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in stopwords)
    return [_stem(w) for w in words]


# bm25s brings numpy: imported when a collection is first indexed, not by every baton command.
def _bm25s() -> Any:
    import bm25s  # type: ignore[import-untyped]  # ships no type information

    return bm25s


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS  # type: ignore[import-untyped]  # as above

    return frozenset(STOPWORDS_EN_PLUS)


def _stem(word: str) -> str:
    """A light suffix stripper (plurals, -ing, -ed, a final -e): enough for policy text."""
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if word.endswith("ing") and len(word) > 5:
        word = _undouble(word[:-3])
    elif word.endswith("ed") and len(word) > 4:
        word = _undouble(word[:-2])
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


def _undouble(word: str) -> str:
    # shipped -> ship, cancelled -> cancel; but passed -> pass
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiousz":
        return word[:-1]
    return word
