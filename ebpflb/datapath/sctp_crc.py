"""The powers of x that bpf/sctp.h multiplies an SCTP port change by to update the packet's CRC32c,
and CRC32c itself (for checking what the programs write). Reflected CRC arithmetic: bit 31 is x^0."""
CRC32C_POLY = 0x82F63B78
X0 = 1 << 31   # x^0


def times_x(value: int, n: int) -> int:
    """value * x^n modulo the polynomial (n shift steps)."""
    for _ in range(n):
        value = (value >> 1) ^ (CRC32C_POLY if value & 1 else 0)
    return value


def multiply(a: int, b: int) -> int:
    """a * b modulo the polynomial (zlib's multmodp)."""
    product = 0
    for i in range(32):
        if a >> (31 - i) & 1:
            product ^= b
        b = times_x(b, 1)
    return product


TIMES_X8 = [times_x(byte, 8) for byte in range(256)]   # the usual byte-at-a-time CRC table


def powers(count: int = 65536) -> list[int]:
    """bpf/sctp.h's sctp_crc_powers: [n] = x^(8 n), each the one before times x^8 (one table step)."""
    table = [X0]
    for _ in range(count - 1):
        value = table[-1]
        table.append(TIMES_X8[value & 0xFF] ^ value >> 8)
    return table


def crc32c(data: bytes) -> int:
    """CRC32c as SCTP computes it (RFC 9260 App. A): the value its checksum field holds, little-endian."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = times_x(crc ^ byte, 8)
    return crc ^ 0xFFFFFFFF
