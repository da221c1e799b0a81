#!/usr/bin/env python3
"""Extracts the text of the Rust toolchain's own documentation (MIT OR Apache-2.0), prose and
code, from the HTML that ships with the toolchain (`rustup component add rust-docs`) into
data/rust-docs.txt.

Sources, in this order, each in sorted file order (code-point order of the relative path):

1. the mdBooks beside the Rust Book in `share/doc/rust/html` (every directory holding an mdBook
   `toc.html`/`print.html`: cargo, clippy, edition-guide, error_codes, nomicon, reference,
   rust-by-example, rustc, rustdoc, style-guide, unstable-book), one document per chapter page;
   a book's translations (subfolders with their own `toc.html`: rust-by-example/es, ja, ko, zh)
   follow it, less the chapters that are mostly (> 50 % of bytes) untranslated English. Left
   out: the Rust Book (`book/`, already data/rust-book.txt), the Embedded Rust Book
   (`embedded-book/`, its prose is CC-BY-SA-4.0), the combined `print.html`/`toc.html`/
   `404.html` pages (they repeat the chapters), and the lines mdBook hides in code blocks
   (`# ` lines and the `fn main() {` wrapper it adds), which rustdoc drops as well.
2. the release notes (`releases.html`, the rust repository's RELEASES.md).
3. the standard library's API pages (std, then alloc, core, proc_macro, std_detect, test), one
   document per item page: the item's path, its declaration, its documentation, then the
   sections that list its inherent methods, trait items, fields, variants, trait / auto-trait /
   blanket implementations and implementors, with their signatures and docs. Left out:
   navigation, sidebars, breadcrumbs (folded into the title line), "Source" links and version
   badges, "Read more" links, module pages' item tables (they repeat each item's first
   paragraph), methods inherited through Deref (whole copies of the target type's methods and
   their docs), redirect pages, `all.html`, `core`/`alloc` item pages whose `std` re-export
   exists at the same path, and `core::arch` pages re-exported by a sibling architecture that has the
   same page (x86 when x86_64 has it, arm/aarch64, wasm and wasm64/wasm32, riscv32/riscv64,
   powerpc/powerpc64, loongarch32/loongarch64, mips/mips64). Module pages (index.html) of
   core/alloc are kept unless their text repeats std's.

Paragraphs, list items, headings, table rows (cells joined by " | ") and quotes become one line
each with whitespace collapsed; code blocks and rustdoc signatures are kept line by line as they
are. Blocks and documents are separated by a blank line. A page whose extracted text (less its
title line, for API pages) equals an earlier page's is dropped. Per-source page and byte counts
go to stderr. Python 3 standard library only; the output is the same bytes on every run.

Usage: python3 data/extract_rust_docs.py [HTML_DIR] > data/rust-docs.txt
"""
import hashlib
import html.parser
import pathlib
import re
import subprocess
import sys

VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr",
}
BLOCKS = {
    "p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "dt", "dd", "tr", "div",
    "section", "summary", "details", "ul", "ol", "dl", "table", "thead", "tbody", "caption",
    "figure", "figcaption", "header", "footer", "article", "aside", "main",
}
SKIP_TAGS = {
    "script", "style", "svg", "nav", "button", "noscript", "template", "head", "iframe",
    "select", "textarea", "rustdoc-toolbar", "rustdoc-topbar", "rustdoc-search",
}
# Elements dropped with everything inside them, by any of their classes.
SKIP_CLASSES = {
    "sidebar", "rightside", "anchor", "doc-anchor", "src", "hideme", "test-arrow", "tooltip",
    "sub-heading", "emoji", "rule-link", "grammar-railroad", "buttons", "button-holder",
    "nav-wrapper", "nav-chapters", "mobile-nav-chapters", "menu-bar", "notable-traits",
    "item-table", "footnote-backref", "since", "search-form", "out-of-band", "boring",
    "skip-main-content",
}
SKIP_IDS = {
    "rustdoc-modnav", "sidebar", "search", "settings", "help", "copy-path", "versioninfo",
}
# rustdoc signature lines (kept line by line, like code blocks).
CODE_HEADER_CLASSES = {"code-header"}
# rustdoc <h2 class="section-header"> sections kept; every other section (Deref methods,
# module item lists, re-exports) is dropped up to the next section header.
KEEP_SECTIONS = {
    "implementations", "required-methods", "provided-methods", "required-associated-types",
    "provided-associated-types", "required-associated-consts", "provided-associated-consts",
    "aliased-type", "dyn-compatibility", "object-safety", "fields", "variants",
    "trait-implementations", "synthetic-implementations", "blanket-implementations",
    "implementors", "synthetic-implementors", "foreign-impls",
}
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
MDBOOK_SKIP_PAGES = {"print.html", "toc.html", "404.html"}
EXCLUDED_BOOKS = {
    "book": "the Rust Book, already data/rust-book.txt",
    "embedded-book": "prose licensed CC-BY-SA-4.0 (only its code is MIT OR Apache-2.0)",
}
# A translated chapter is dropped when more than this share of its bytes are blocks that the
# English chapter at the same path has too (an untranslated copy).
UNTRANSLATED = 0.5
# std first, so that where a core/alloc module page repeats std's text, std's is the one kept.
API_CRATES = ["std", "alloc", "core", "proc_macro", "std_detect", "test"]
# core::arch modules whose pages are kept only where the sibling module lacks the same page.
ARCH_SIBLINGS = {
    "x86": "x86_64", "arm": "aarch64", "wasm": "wasm32", "wasm64": "wasm32",
    "riscv32": "riscv64", "powerpc": "powerpc64", "loongarch32": "loongarch64", "mips": "mips64",
}


def prose(text):
    return re.sub(r"\s+", " ", text.translate(INVISIBLE)).strip()


def code(text):
    text = text.translate(INVISIBLE).replace("\xa0", " ").replace("\r\n", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


class Page(html.parser.HTMLParser):
    """Text of one mdBook chapter or rustdoc item page, as a list of blocks."""

    def __init__(self, rustdoc, container="main"):
        super().__init__(convert_charrefs=True)
        self.rustdoc = rustdoc
        self.container = container  # the element whose content is the page's text
        self.stack = []  # (tag, effects) of the open elements
        self.main = 0
        self.skip_depth = None  # stack depth of the outermost skipped element
        self.section_skip = False
        self.pre = None  # list of raw text pieces while inside <pre>
        self.crumbs = None  # rustdoc breadcrumbs being read
        self.path = ""
        self.cells = 0
        self.buf = []
        self.out = []

    def flush(self):
        text = prose("".join(self.buf))
        self.buf = []
        text = re.sub(r"\s*↩$", "", text)
        if self.rustdoc:
            text = re.sub(r"\s*Read more$", "", text)
        if text:
            self.out.append(text)

    def active(self):
        return self.main and self.skip_depth is None and not self.section_skip

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if tag in VOID:
            if tag == "br" and self.active():
                (self.pre if self.pre is not None else self.buf).append("\n")
            return
        effects = set()
        if tag == self.container:
            self.main += 1
            effects.add("main")
        if self.main and self.skip_depth is None:
            if (
                self.rustdoc
                and tag == "h2"
                and "section-header" in classes
                and self.pre is None
            ):
                self.flush()
                self.section_skip = attrs.get("id") not in KEEP_SECTIONS
            if "rustdoc-breadcrumbs" in classes:
                self.crumbs = []
                effects.add("crumbs")
            elif (
                tag in SKIP_TAGS
                or classes & SKIP_CLASSES
                or attrs.get("id") in SKIP_IDS
            ):
                self.skip_depth = len(self.stack)
                effects.add("skip")
        if self.active() or "crumbs" in effects:
            if self.pre is None and (tag == "pre" or classes & CODE_HEADER_CLASSES):
                self.flush()
                self.pre = []
                effects.add("pre")
            elif self.pre is not None:
                if tag == "div" and "where" in classes:
                    # rustdoc shows a where clause on lines of its own
                    self.pre.append("\n")
                    effects.add("newline")
            else:
                if tag in BLOCKS:
                    self.flush()
                    effects.add("block")
                if tag == "tr":
                    self.cells = 0
                elif tag in ("td", "th"):
                    if self.cells:
                        self.buf.append(" | ")
                    self.cells += 1
        self.stack.append((tag, effects))

    def handle_endtag(self, tag):
        if tag in VOID or all(t != tag for t, _ in self.stack):
            return
        while self.stack:
            t, effects = self.stack.pop()
            self.close(t, effects)
            if t == tag:
                break

    def close(self, tag, effects):
        if "skip" in effects:
            self.skip_depth = None
        if "newline" in effects:
            self.pre.append("\n")
        if "pre" in effects:
            text = code("".join(self.pre))
            self.pre = None
            if text:
                self.out.append(text)
        if "crumbs" in effects:
            self.path = "::".join(p for p in prose("".join(self.crumbs)).split("::") if p)
            self.crumbs = None
            return
        if "block" in effects:
            if self.rustdoc and tag == "h1":
                # "Struct Vec" + breadcrumbs "std::vec" -> "Struct std::vec::Vec"
                words = prose("".join(self.buf)).split(" ")
                if self.path and len(words) > 1:
                    words[-1] = self.path + "::" + words[-1]
                self.buf = [" ".join(words)]
            self.flush()
        if "main" in effects:
            self.flush()
            self.main -= 1
            self.section_skip = False

    def handle_data(self, data):
        if self.crumbs is not None and self.skip_depth is None:
            self.crumbs.append(data)
        elif self.active():
            (self.pre if self.pre is not None else self.buf).append(data)

    def text(self):
        self.close("", {"block"})
        return self.out


def head(path):
    with open(path, "rb") as f:
        return f.read(2048).decode("utf-8", "replace")


def is_redirect(start):
    return 'http-equiv="refresh"' in start


def mdbook_pages(book, translations=()):
    """Chapter pages of an mdBook, less its translations' subfolders."""
    for f in sorted(book.rglob("*.html"), key=lambda p: p.relative_to(book).as_posix()):
        rel = f.relative_to(book)
        if rel.as_posix() in MDBOOK_SKIP_PAGES or rel.parts[0] in translations:
            continue
        start = head(f)
        if is_redirect(start):
            continue
        yield f


def lang_of(book):
    start = head(book / "toc.html") if (book / "toc.html").exists() else head(book / "index.html")
    m = re.search(r'<html[^>]*\blang="([^"]*)"', start)
    return m.group(1) if m else "en"


def api_pages(root, crate):
    std = root / "std"
    for f in sorted(crate.rglob("*.html"), key=lambda p: p.relative_to(root).as_posix()):
        rel = f.relative_to(crate)
        parts = rel.parts
        if rel.as_posix() == "all.html":
            continue
        if (
            crate.name == "core"
            and parts[0] == "arch"
            and len(parts) > 2
            and parts[1] in ARCH_SIBLINGS
            and crate.joinpath("arch", ARCH_SIBLINGS[parts[1]], *parts[2:]).exists()
        ):
            continue
        # std re-exports most of core and alloc: an item page at the same path is the same
        # item. Module pages (index.html) can have docs of their own (core::ffi vs std::ffi,
        # the crate roots) and are left to the duplicate-text check.
        if crate.name in ("core", "alloc") and rel.name != "index.html" and (std / rel).exists():
            continue
        if is_redirect(head(f)):
            continue
        yield f


def main():
    if len(sys.argv) > 1:
        root = pathlib.Path(sys.argv[1])
    else:
        sysroot = subprocess.run(
            ["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True
        ).stdout.strip()
        root = pathlib.Path(sysroot) / "share/doc/rust/html"
    books = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir()
        and ((d / "toc.html").exists() or (d / "print.html").exists())
        and d.name not in EXCLUDED_BOOKS
    )
    crates = [c for c in API_CRATES if (root / c / "all.html").exists()]
    if not books or not crates:
        sys.exit(f"no mdBooks or API crates under {root}")

    # (label, kind, files, English chapters to compare with for translations)
    sources = []
    for name in books:
        book = root / name
        translations = sorted(
            d.name for d in book.iterdir() if d.is_dir() and (d / "toc.html").exists()
        )
        english = {}
        sources.append(
            (f"mdBook {name}", "mdbook", mdbook_pages(book, translations), (english, book))
        )
        for t in translations:
            label = f"mdBook {name}/{t} (lang {lang_of(book / t)})"
            sources.append((label, "translation", mdbook_pages(book / t), (english, book / t)))
    if (root / "releases.html").exists():
        sources.append(("release notes", "releases", [root / "releases.html"], None))
    for name in crates:
        sources.append((f"API    {name}", "api", api_pages(root, root / name), None))

    out = sys.stdout.buffer
    seen = set()
    stats = {}  # label -> [pages, bytes, duplicates dropped, untranslated dropped]
    for label, kind, pages, extra in sources:
        for f in pages:
            rustdoc = kind == "api"
            if rustdoc and f.relative_to(root).parts[:2] == ("core", "arch"):
                label_f = label + "::arch"
            else:
                label_f = label
            st = stats.setdefault(label_f, [0, 0, 0, 0])
            parser = Page(rustdoc, "body" if kind == "releases" else "main")
            parser.feed(f.read_text(encoding="utf-8"))
            blocks = parser.text()
            body = blocks[1:] if rustdoc else blocks
            if not body:
                continue
            if kind == "mdbook":
                english, book = extra
                english[f.relative_to(book).as_posix()] = set(blocks)
            elif kind == "translation":
                english, book = extra
                same = english.get(f.relative_to(book).as_posix(), set())
                copied = sum(len(b) for b in blocks if b in same)
                if copied > UNTRANSLATED * sum(len(b) for b in blocks):
                    st[3] += 1
                    continue
            key = hashlib.sha256("\n\n".join(body).encode()).digest()
            if key in seen:
                st[2] += 1
                continue
            seen.add(key)
            data = ("\n\n".join(blocks) + "\n\n").encode("utf-8")
            out.write(data)
            st[0] += 1
            st[1] += len(data)
    for label, (docs, size, dups, untranslated) in stats.items():
        note = f"{dups} duplicate pages dropped"
        if untranslated:
            note += f", {untranslated} untranslated pages dropped"
        print(f"{label:36} {docs:6} pages {size:10} bytes ({note})", file=sys.stderr)
    total = sum(st[1] for st in stats.values())
    pages = sum(st[0] for st in stats.values())
    print(f"{'total':36} {pages:6} pages {total:10} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
