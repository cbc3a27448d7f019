"""The DATA check's fast path: the compiled scan (relay/smtp/_plainlines.c) must give
the regex's answer for any bytes, and the regex must mean what DATA's line checks mean."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.smtp import plainlines, server
from relay.smtp.plainlines import MAX_LINE, by_regex

Scan = Callable[[bytes | bytearray, int], int]


def _compiled() -> Scan:
    if not plainlines.COMPILED:
        pytest.skip("relay/smtp/_plainlines.c was not built: no C compiler or Python "
                    "headers at install (scripts/install-build-tools installs them)")
    return plainlines.plain_prefix


@pytest.fixture(params=["compiled", "regex"])
def scan(request: pytest.FixtureRequest) -> Scan:
    return _compiled() if request.param == "compiled" else by_regex


X = b"x"
CASES = [
    (b"", 0),
    (b"\r\n", 2),
    (b"hello\r\nworld\r\n", 14),
    (b"hello\r\nworl", 7),  # a line not all there yet
    (b"hello\r", 0),  # a CR at the end: its LF may be on the way
    (b"hello\r\n.\r\n", 7),  # the end of DATA
    (b"hello\r\n..stuffed\r\n", 7),
    (b".", 0),
    (b"bare\rcr\r\n", 0),
    (b"bare\nlf\r\n", 0),
    (b"ok\r\nbare lf\n", 4),
    (b"nul\x00\r\n", 0),
    (b"\x00\r\n", 0),
    (X * MAX_LINE + b"\r\n", MAX_LINE + 2),
    (X * (MAX_LINE + 1) + b"\r\n", 0),
    (b"a\r\n" + X * (MAX_LINE + 1) + b"\r\n", 3),
    (X * (MAX_LINE + 500), 0),
    (b" .leading space\r\n", 17),
    (b"\xff\xfe 8-bit \x7f\r\n", 12),
]


@pytest.mark.parametrize(("data", "plain"), CASES)
def test_a_run_of_plain_lines_ends_where_a_line_needs_a_closer_look(
        scan: Scan, data: bytes, plain: int) -> None:
    assert scan(bytearray(data), len(data)) == plain
    assert scan(data, len(data)) == plain


@pytest.mark.parametrize("bad", [b"\r", b"\n", b"\x00"])
def test_a_cr_lf_or_nul_inside_a_line_is_found_at_any_position(scan: Scan, bad: bytes) -> None:
    # The compiled scan looks at 16 bytes at a time: put the byte in every lane of the
    # first blocks, after a plain line that shifts where the blocks start.
    for before in (0, 5):
        head = b"y" * before + b"\r\n"
        for k in range(48):
            data = head + X * k + bad + b"tail\r\n"
            assert scan(data, len(data)) == len(head), (before, k)


def test_lines_around_the_length_limit(scan: Scan) -> None:
    for length in range(MAX_LINE - 40, MAX_LINE + 40):
        data = b"ok\r\n" + X * length + b"\r\n"
        expected = len(data) if length <= MAX_LINE else 4
        assert scan(data, len(data)) == expected, length


def test_only_the_first_end_bytes_count(scan: Scan) -> None:
    data = bytearray(b"one\r\ntwo\r\nthree\r\n")
    assert scan(data, 10) == 10
    assert scan(data, 9) == 5  # "two\r" without its LF
    assert scan(data, 0) == 0


def test_the_compiled_scan_refuses_bad_arguments_instead_of_reading_past_the_buffer() -> None:
    _compiled()
    from relay.smtp._plainlines import plain_lines

    data = bytearray(b"one\r\ntwo\r\n")
    assert plain_lines(data, 1 << 40, MAX_LINE) == len(data)  # clamped to the buffer
    with pytest.raises(ValueError, match="negative"):
        plain_lines(data, -1, MAX_LINE)
    with pytest.raises(TypeError):
        plain_lines("a str", 5, MAX_LINE)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        plain_lines(data, 5)  # type: ignore[call-arg]


# Pieces that sit on every edge of the test: line ends of each kind, dots at line starts,
# NUL, lines just under, at and over the limit.
_pieces = st.one_of(
    st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"\x00", b"a", b" ", b"\xff",
                     b"\r\n.", b"\r\n.\r\n", b"\n.", b"\r\r\n"]),
    st.builds(lambda n: X * n, st.integers(MAX_LINE - 3, MAX_LINE + 2)),
    st.binary(max_size=40),
)


@given(st.lists(_pieces, max_size=30), st.integers(min_value=0, max_value=40_000))
@settings(max_examples=600, deadline=None)
@example([X * MAX_LINE, b"\r\n"], 10_000)
@example([X * (MAX_LINE + 1), b"\r\n"], 10_000)
@example([b"a\r\n", b"\x00"], 10_000)
def test_the_compiled_scan_agrees_with_the_regex(pieces: list[bytes], cut: int) -> None:
    scan = _compiled()
    data = b"".join(pieces)
    end = min(cut, len(data))
    assert scan(bytearray(data), end) == by_regex(bytearray(data), end)


@given(st.lists(_pieces, max_size=30))
@settings(max_examples=300, deadline=None)
def test_plain_lines_are_those_the_line_checks_pass_unchanged(pieces: list[bytes]) -> None:
    # The definition, line by line, against the regex that both scans are held to.
    data = b"".join(pieces)
    expected = 0
    for line in data.split(b"\r\n")[:-1]:  # the last piece has no CRLF of its own
        if (line.startswith(b".") or len(line) > MAX_LINE
                or any(c in line for c in (b"\r", b"\n", b"\x00"))):
            break
        expected += len(line) + 2
    assert by_regex(data, len(data)) == expected


@pytest.mark.parametrize("implementation", ["compiled", "regex"])
def test_data_takes_plain_runs_off_the_stream_and_leaves_the_rest(
        monkeypatch: pytest.MonkeyPatch, implementation: str) -> None:
    chosen = _compiled() if implementation == "compiled" else by_regex
    monkeypatch.setattr(server, "plain_prefix", chosen)
    loop = asyncio.new_event_loop()
    try:
        _take_from(asyncio.StreamReader(loop=loop))
    finally:
        loop.close()


def _take_from(reader: asyncio.StreamReader) -> None:
    reader.feed_data(b"Line one\r\nline two\r\n..stuffed\r\nmore\r\n")
    assert server._take_plain_lines(reader, None) == b"Line one\r\nline two\r\n"
    assert server._take_plain_lines(reader, None) == b""  # the stuffed line is DATA's
    assert bytes(reader._buffer) == b"..stuffed\r\nmore\r\n"  # type: ignore[attr-defined]
    reader._buffer[:11] = b""  # type: ignore[attr-defined]
    assert server._take_plain_lines(reader, 3) == b""  # no whole line within 3 bytes
    assert server._take_plain_lines(reader, None) == b"more\r\n"


_ASAN_SWEEP = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
import _plainlines
from relay.smtp.plainlines import MAX_LINE, by_regex


def exact(data):
    # A buffer of exactly len(data) bytes from malloc (bytes and bytearray keep a NUL
    # after their data, which would hide a read one byte too far).
    return (ctypes.c_char * len(data)).from_buffer_copy(data) if data else data


for n in range(0, 70):
    for tail in (b"", b"\\r", b"\\r\\n", b"x", b"\\n", b"\\x00"):
        for data in (b"x" * n + tail, b"ab\\r\\n" + b"x" * n + tail,
                     b"x" * (MAX_LINE - 35 + n) + tail):
            buffer = exact(data)
            for end in range(max(0, len(data) - 18), len(data) + 1):
                got = _plainlines.plain_lines(buffer, end, MAX_LINE)
                assert got == by_regex(data, end), (data, end)
print("swept")
"""


def _asan_build(gcc: str, out: Path, *defines: str) -> None:
    source = Path(__file__).resolve().parents[1] / "relay" / "smtp" / "_plainlines.c"
    include = sysconfig.get_paths()["include"]
    out.mkdir()
    subprocess.run([gcc, "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer",
                    "-shared", "-fPIC", f"-I{include}", *defines, str(source),
                    "-o", str(out / f"_plainlines{sysconfig.get_config_var('EXT_SUFFIX')}")],
                   check=True)


@pytest.mark.parametrize("build", ["simd", "table"])
def test_the_scan_reads_nothing_outside_the_buffer(tmp_path: Path, build: str) -> None:
    # The C is built again with AddressSanitizer (with SSE2 where there is SSE2, and with
    # the byte-at-a-time table loop other machines use) and run over buffers of every
    # length near the 16-byte blocks it reads, each exactly as long as its data.
    _compiled()
    gcc = shutil.which("gcc")
    assert gcc, "gcc is installed by scripts/install-build-tools"
    libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert os.path.isabs(libasan), "libasan comes with Debian's gcc (libgcc-12-dev)"
    _asan_build(gcc, tmp_path / build, *(["-DPLAINLINES_NO_SIMD"] if build == "table" else []))
    env = {**os.environ, "PYTHONMALLOC": "malloc", "LD_PRELOAD": libasan,
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}
    # First the sanitizer on its own: a machine where it cannot run says so here.
    alone = subprocess.run([sys.executable, "-c", "print('ok')"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert alone.stdout.strip() == "ok", ("AddressSanitizer does not run on this machine: "
                                          + alone.stderr[-2000:])
    run = subprocess.run([sys.executable, "-c", _ASAN_SWEEP, str(tmp_path / build)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert "AddressSanitizer" not in run.stderr, run.stderr[-3000:]
    assert run.returncode == 0 and run.stdout.strip() == "swept", run.stderr[-3000:]
