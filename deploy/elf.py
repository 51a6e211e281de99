"""The ELF reader: which shared libraries and symbol versions (GLIBC_2.17, GLIBCXX_3.4.19...) a binary needs.

readelf would do, but binutils is not on every machine that builds the bundle, and the format is small.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass


@dataclass
class ElfNeeds:
    """What one ELF file needs at load time: its DT_NEEDED libraries and the symbol versions it references."""

    libraries: list[str]  # DT_NEEDED sonames
    versions: list[str]  # e.g. GLIBC_2.17, GLIBCXX_3.4.19


def elf_needs(data: bytes) -> ElfNeeds | None:
    """Read DT_NEEDED and the version-needs table (.gnu.version_r) of a 64-bit little-endian ELF file.

    `data` is the whole file. Returns None for anything that is not such a file; a truncated or corrupt one raises
    struct.error or ValueError.
    """
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def string_at(section_index: int, offset: int) -> str:
        start = sections[section_index][4] + offset
        return data[start : data.index(b"\0", start)].decode("ascii", "replace")

    libraries: list[str] = []
    versions: list[str] = []
    for _name, sh_type, _flags, _addr, offset, size, link, info, _align, _entsize in sections:
        if sh_type == 6:  # SHT_DYNAMIC: (d_tag, d_val) pairs; DT_NEEDED is tag 1
            for pos in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, pos)
                if tag == 0:
                    break
                if tag == 1:
                    libraries.append(string_at(link, value))
        elif sh_type == 0x6FFFFFFE:  # SHT_GNU_verneed: `info` Verneed entries, each with a chain of Vernaux
            pos = offset
            for _ in range(info):
                _version, count, _file, aux, next_need = struct.unpack_from("<HHIII", data, pos)
                aux_pos = pos + aux
                for _ in range(count):
                    _hash, _flags2, _other, name, next_aux = struct.unpack_from("<IHHII", data, aux_pos)
                    versions.append(string_at(link, name))
                    aux_pos += next_aux
                pos += next_need
    return ElfNeeds(libraries=libraries, versions=versions)


def version_key(symbol_version: str) -> tuple[str, tuple[int, ...]] | None:
    """GLIBC_2.17 -> ("GLIBC", (2, 17)); None for GLIBC_PRIVATE and other unnumbered names."""
    match = re.fullmatch(r"([A-Z]+)_(\d+(?:\.\d+)*)", symbol_version)
    if not match:
        return None
    return match.group(1), tuple(int(part) for part in match.group(2).split("."))
