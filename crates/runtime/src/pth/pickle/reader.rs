//! Bounds-checked reading of opcode operands, and opcode names for messages.

use super::{fail, PResult};

/// The pickle bytes and a cursor; every read is bounds-checked.
pub(super) struct Reader<'a> {
    pub data: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: u64) -> PResult<&'a [u8]> {
        let rest = &self.data[self.pos..];
        if n > rest.len() as u64 {
            return fail("pickle ends mid-stream");
        }
        self.pos += n as usize;
        Ok(&rest[..n as usize])
    }
    pub(super) fn array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }
    pub(super) fn u8(&mut self) -> PResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(super) fn u16(&mut self) -> PResult<u16> {
        self.array().map(u16::from_le_bytes)
    }
    pub(super) fn u32(&mut self) -> PResult<u32> {
        self.array().map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self) -> PResult<u64> {
        self.array().map(u64::from_le_bytes)
    }
    /// A text line (protocol 0 operands), without its `\n`.
    pub(super) fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else { return fail("pickle ends mid-stream") };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).or_else(|_| fail("a text operand is not UTF-8"))
    }
}

/// Opcode names for messages (pickletools spelling).
#[rustfmt::skip]
pub(super) fn op_name(op: u8) -> String {
    let name = match op {
        0x80 => "PROTO", 0x95 => "FRAME", b'(' => "MARK", b'0' => "POP", b'1' => "POP_MARK", b'2' => "DUP",
        b'N' => "NONE", 0x88 => "NEWTRUE", 0x89 => "NEWFALSE", b'J' => "BININT", b'K' => "BININT1",
        b'M' => "BININT2", 0x8a => "LONG1", 0x8b => "LONG4", b'G' => "BINFLOAT", b'I' => "INT", b'L' => "LONG",
        b'F' => "FLOAT", b'X' => "BINUNICODE", 0x8c => "SHORT_BINUNICODE", 0x8d => "BINUNICODE8",
        b'T' => "BINSTRING", b'U' => "SHORT_BINSTRING", b'C' => "SHORT_BINBYTES", b'B' => "BINBYTES",
        0x8e => "BINBYTES8", 0x96 => "BYTEARRAY8", b'}' => "EMPTY_DICT", b']' => "EMPTY_LIST",
        b')' => "EMPTY_TUPLE", 0x8f => "EMPTY_SET", b'l' => "LIST", 0x91 => "FROZENSET", b't' => "TUPLE",
        0x85 => "TUPLE1", 0x86 => "TUPLE2", 0x87 => "TUPLE3", b'd' => "DICT", b'a' => "APPEND",
        b'e' => "APPENDS", 0x90 => "ADDITEMS", b's' => "SETITEM", b'u' => "SETITEMS", b'q' => "BINPUT",
        b'r' => "LONG_BINPUT", 0x94 => "MEMOIZE", b'p' => "PUT", b'h' => "BINGET", b'j' => "LONG_BINGET",
        b'g' => "GET", b'c' => "GLOBAL", 0x93 => "STACK_GLOBAL", b'R' => "REDUCE", 0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX", b'i' => "INST", b'o' => "OBJ", b'b' => "BUILD", b'Q' => "BINPERSID",
        b'P' => "PERSID", b'.' => "STOP", 0x82 => "EXT1", 0x83 => "EXT2", 0x84 => "EXT4",
        0x97 => "NEXT_BUFFER", 0x98 => "READONLY_BUFFER",
        _ => return format!("opcode 0x{op:02x}"),
    };
    name.to_owned()
}
