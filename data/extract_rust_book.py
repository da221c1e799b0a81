#!/usr/bin/env python3
"""Extracts the English prose of The Rust Programming Language (the Rust Book, MIT OR
Apache-2.0) from the HTML that ships with the Rust toolchain's documentation
(`rustup component add rust-docs`) into data/rust-book.txt.

Paragraphs, list items, headings and block quotes are kept; code listings (<pre>) are dropped;
inline code stays as text. Chapters are taken in file-name order (ch00 … ch21, appendices).

Usage: python3 data/extract_rust_book.py [BOOK_HTML_DIR] > data/rust-book.txt
"""
import html.parser
import pathlib
import re
import subprocess
import sys

BLOCKS = {"p", "li", "h1", "h2", "h3", "h4", "blockquote", "dt", "dd", "td", "th"}


class Prose(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.in_main = False
        self.skip = 0
        self.depth = 0
        self.buf = []
        self.out = []

    def flush(self):
        text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
        if text:
            self.out.append(text)
        self.buf = []

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.in_main = True
        if not self.in_main:
            return
        if tag in ("pre", "script", "style", "nav") or (
            tag == "div" and ("class", "buttons") in attrs
        ):
            self.skip += 1
        if tag in BLOCKS:
            self.flush()

    def handle_endtag(self, tag):
        if tag == "main":
            self.flush()
            self.in_main = False
        if not self.in_main:
            return
        if tag in ("pre", "script", "style", "nav") and self.skip:
            self.skip -= 1
        if tag in BLOCKS:
            self.flush()

    def handle_data(self, data):
        if self.in_main and not self.skip:
            self.buf.append(data)


def main():
    if len(sys.argv) > 1:
        book = pathlib.Path(sys.argv[1])
    else:
        sysroot = subprocess.run(
            ["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True
        ).stdout.strip()
        book = pathlib.Path(sysroot) / "share/doc/rust/html/book"
    files = sorted(book.glob("ch*.html")) + sorted(book.glob("appendix-*.html"))
    if not files:
        sys.exit(f"no chapters under {book}")
    for f in files:
        parser = Prose()
        parser.feed(f.read_text(encoding="utf-8"))
        if parser.out:
            sys.stdout.write("\n\n".join(parser.out) + "\n\n")


if __name__ == "__main__":
    main()
