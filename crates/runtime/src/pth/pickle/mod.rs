//! A minimal, safe pickle VM for `torch.save` files: it rebuilds plain data and tensors and never runs code.
//!
//! Python's unpickler calls whatever `module.name` a pickle names. This one resolves each GLOBAL against a short
//! allow-list of pure constructors (tensor rebuild, `OrderedDict`, `argparse.Namespace`, dtype and storage
//! markers, `_codecs.encode`, `set`) and refuses anything else the moment the name is read.
//!
//! As in Python, objects live in a heap and the stack and memo hold handles to them, so a dict memoized before
//! SETITEMS fills it is the filled dict when fetched again. At STOP the result is copied out into a `PthValue`
//! under a depth cap (which also stops self-referencing structures) and a size budget (which stops a few shared
//! references from expanding into an enormous tree). Every allocation is bounded by the pickle's length.

mod globals;
mod reader;
mod resolve;

use super::tensor::{TorchDType, View};
use super::PthValue;
use candle_core::Tensor;
use globals::{resolve_global, Global};
use reader::{op_name, Reader};
use std::collections::HashMap;

/// Why unpickling stopped; `super` turns it into `crate::Error` with the file's path.
#[derive(Debug)]
pub(super) enum PickleError {
    Format(String),
    /// A global outside the allow-list, as `module.name`.
    Forbidden(String),
}

pub(super) type PResult<T> = std::result::Result<T, PickleError>;

fn fail<T>(msg: impl Into<String>) -> PResult<T> {
    Err(PickleError::Format(msg.into()))
}

/// Where tensor data comes from: the archive's `data/<key>` entries, or a test double.
pub(super) trait TensorSource {
    fn tensor(&mut self, storage: &StorageRef, view: &View) -> Result<Tensor, String>;
}

/// A storage named by a persistent id `('storage', storage_type, key, location, numel)`.
#[derive(Debug, Clone)]
pub(super) struct StorageRef {
    pub dtype: TorchDType,
    pub key: String,
    /// Element count of the whole storage.
    pub numel: usize,
}

/// Runs the pickle in `data`, fetching tensors from `source`, and returns the object it builds.
pub(super) fn unpickle(data: &[u8], source: &mut dyn TensorSource) -> PResult<PthValue> {
    let copy_budget = data.len().saturating_mul(4).saturating_add(1_000_000);
    let (stack, marks, memo, heap) = (vec![], vec![], HashMap::new(), vec![]);
    let mut vm = Vm { r: Reader { data, pos: 0 }, stack, marks, memo, heap, copy_budget, source };
    let root = vm.run()?;
    resolve::to_value(&vm.heap, root, data.len())
}

/// A stack or memo entry: small values inline, everything else a handle into the heap.
#[derive(Debug, Clone, Copy)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Global(Global),
    Heap(usize),
}

#[derive(Debug)]
enum HeapObj {
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Obj>),
    Tuple(Vec<Obj>),
    Dict(Vec<(Obj, Obj)>),
    Namespace(Vec<(String, Obj)>),
    Tensor(Tensor),
    Storage(StorageRef),
    Skipped(String),
}

impl HeapObj {
    fn kind(&self) -> &'static str {
        match self {
            HeapObj::Str(_) => "str",
            HeapObj::Bytes(_) => "bytes",
            HeapObj::List(_) => "list",
            HeapObj::Tuple(_) => "tuple",
            HeapObj::Dict(_) => "dict",
            HeapObj::Namespace(_) => "argparse.Namespace",
            HeapObj::Tensor(_) => "tensor",
            HeapObj::Storage(_) => "storage",
            HeapObj::Skipped(_) => "skipped object",
        }
    }
}

struct Vm<'a> {
    r: Reader<'a>,
    stack: Vec<Obj>,
    /// Stack lengths at each MARK; nothing below the innermost mark can be popped, as in Python's metastack.
    marks: Vec<usize>,
    memo: HashMap<u32, Obj>,
    heap: Vec<HeapObj>,
    /// Items and bytes that calls may still copy. Each copy is bounded by an object already read, but calls can
    /// repeat through the memo; this keeps a small file from copying one big tuple millions of times.
    copy_budget: usize,
    source: &'a mut dyn TensorSource,
}

impl Vm<'_> {
    fn run(&mut self) -> PResult<Obj> {
        loop {
            let at = self.r.pos;
            let Ok(op) = self.r.u8() else {
                return fail(format!("pickle ends mid-stream: no STOP opcode in its {} bytes", self.r.data.len()));
            };
            if op == b'.' {
                return self.pop().map_err(|e| context(e, op, at));
            }
            self.step(op).map_err(|e| context(e, op, at))?;
        }
    }

    fn step(&mut self, op: u8) -> PResult<()> {
        match op {
            0x80 => {
                let protocol = self.r.u8()?;
                if protocol > 5 {
                    return fail(format!("pickle protocol {protocol} is newer than 5"));
                }
            }
            0x95 => {
                self.r.u64()?; // FRAME: the frame length is only a read-ahead hint
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => self.pop_or_mark()?,
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.peek()?;
                self.stack.push(top);
            }
            // Scalars.
            b'N' => self.stack.push(Obj::None),
            0x88 => self.stack.push(Obj::Bool(true)),
            0x89 => self.stack.push(Obj::Bool(false)),
            b'J' => self.stack.push(Obj::Int(i64::from(self.r.u32()? as i32))),
            b'K' => self.stack.push(Obj::Int(i64::from(self.r.u8()?))),
            b'M' => self.stack.push(Obj::Int(i64::from(self.r.u16()?))),
            0x8a => {
                let n = self.r.u8()?;
                self.push_long(n.into())?
            }
            0x8b => {
                let n = self.r.u32()?;
                self.push_long(n.into())?
            }
            b'G' => self.stack.push(Obj::Float(f64::from_be_bytes(self.r.array()?))),
            b'I' => self.push_text_int()?,
            b'L' => {
                let text = self.r.line()?;
                self.push_int_text(text.strip_suffix('L').unwrap_or(text))?
            }
            b'F' => {
                let text = self.r.line()?;
                let value = text.trim().parse().or_else(|_| fail(format!("bad FLOAT operand {text:?}")))?;
                self.stack.push(Obj::Float(value))
            }
            // Strings and bytes.
            b'X' | 0x8c | 0x8d => {
                let len = self.len_operand(op)?;
                self.push_str(len)?
            }
            b'T' | b'U' => {
                let len = self.len_operand(op)?;
                self.push_latin1(len)?
            }
            b'C' | b'B' | 0x8e | 0x96 => {
                let len = self.len_operand(op)?;
                self.push_bytes(len)?
            }
            // Containers (sets become lists).
            b'}' => self.push_heap(HeapObj::Dict(vec![])),
            b']' | 0x8f => self.push_heap(HeapObj::List(vec![])),
            b')' => self.push_heap(HeapObj::Tuple(vec![])),
            b'l' | 0x91 => {
                let items = self.pop_mark()?;
                self.push_heap(HeapObj::List(items))
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push_heap(HeapObj::Tuple(items))
            }
            0x85..=0x87 => {
                let items = self.pop_n(usize::from(op - 0x84))?;
                self.push_heap(HeapObj::Tuple(items))
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push_heap(HeapObj::Dict(pairs))
            }
            b'a' => {
                let item = self.pop()?;
                self.extend_list(vec![item])?
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend_list(items)?
            }
            b's' => {
                let items = self.pop_n(2)?;
                self.set_items(items)?
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?
            }
            // Memo.
            b'q' => {
                let index = self.r.u8()?;
                self.put(index.into())?
            }
            b'r' => {
                let index = self.r.u32()?;
                self.put(index)?
            }
            0x94 => self.put(u32::try_from(self.memo.len()).unwrap_or(u32::MAX))?,
            b'p' => {
                let index = self.r.line()?;
                self.put(index.parse().or_else(|_| fail(format!("bad PUT index {index:?}")))?)?
            }
            b'h' => {
                let index = self.r.u8()?;
                self.get(index.into())?
            }
            b'j' => {
                let index = self.r.u32()?;
                self.get(index)?
            }
            b'g' => {
                let index = self.r.line()?;
                self.get(index.parse().or_else(|_| fail(format!("bad GET index {index:?}")))?)?
            }
            // Globals and calls.
            b'c' => {
                let (module, name) = (self.r.line()?, self.r.line()?);
                self.stack.push(Obj::Global(resolve_global(module, name)?))
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let global = resolve_global(self.str(module)?, self.str(name)?)?;
                self.stack.push(Obj::Global(global))
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let args = self.copy_items(args)?;
                let value = self.call(callable, &args)?;
                self.stack.push(value)
            }
            0x92 => {
                let kwargs = self.pop()?;
                if !matches!(self.heap_obj(kwargs)?, HeapObj::Dict(d) if d.is_empty()) {
                    return fail("NEWOBJ_EX with keyword arguments is not supported");
                }
                let args = self.pop()?;
                let class = self.pop()?;
                let args = self.copy_items(args)?;
                let value = self.call(class, &args)?;
                self.stack.push(value)
            }
            b'i' => {
                let (module, name) = (self.r.line()?, self.r.line()?);
                let class = Obj::Global(resolve_global(module, name)?);
                let args = self.pop_mark()?;
                let value = self.call(class, &args)?;
                self.stack.push(value)
            }
            b'o' => {
                let items = self.pop_mark()?;
                let Some((&class, args)) = items.split_first() else { return fail("OBJ without a class") };
                let value = self.call(class, args)?;
                self.stack.push(value)
            }
            b'b' => self.build()?,
            b'Q' => {
                let pid = self.pop()?;
                let storage = self.persistent_storage(pid)?;
                self.push_heap(HeapObj::Storage(storage))
            }
            b'P' => return fail("text persistent ids (PERSID) are not used by torch.save"),
            0x82..=0x84 => return fail("the copyreg extension registry (EXT1/EXT2/EXT4) is not supported"),
            0x97 | 0x98 => return fail("out-of-band pickle buffers are not supported"),
            _ => return fail("unknown pickle opcode"),
        }
        Ok(())
    }

    /// The length operand of a string or bytes opcode: 1, 4 or 8 bytes by opcode.
    fn len_operand(&mut self, op: u8) -> PResult<u64> {
        match op {
            0x8c | b'U' | b'C' => self.r.u8().map(u64::from),
            0x8d | 0x8e | 0x96 => self.r.u64(),
            _ => self.r.u32().map(u64::from),
        }
    }

    // ----- stack, marks, heap, memo -----

    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> PResult<Obj> {
        if self.stack.len() <= self.base() {
            return fail("stack underflow");
        }
        self.stack.pop().map_or_else(|| fail("stack underflow"), Ok)
    }

    fn pop_n(&mut self, n: usize) -> PResult<Vec<Obj>> {
        let Some(start) = self.stack.len().checked_sub(n).filter(|&s| s >= self.base()) else {
            return fail("stack underflow");
        };
        Ok(self.stack.split_off(start))
    }

    fn peek(&self) -> PResult<Obj> {
        match self.stack.last() {
            Some(&top) if self.stack.len() > self.base() => Ok(top),
            _ => fail("stack underflow"),
        }
    }

    /// POP: drops the top item, or the innermost mark when nothing is above it (Python's behaviour).
    fn pop_or_mark(&mut self) -> PResult<()> {
        if self.stack.len() > self.base() {
            self.pop().map(drop)
        } else if self.marks.pop().is_some() {
            Ok(())
        } else {
            fail("stack underflow")
        }
    }

    fn pop_mark(&mut self) -> PResult<Vec<Obj>> {
        match self.marks.pop() {
            Some(mark) if mark <= self.stack.len() => Ok(self.stack.split_off(mark)),
            _ => fail("no MARK to pop to"),
        }
    }

    fn alloc(&mut self, obj: HeapObj) -> Obj {
        self.heap.push(obj);
        Obj::Heap(self.heap.len() - 1)
    }

    fn push_heap(&mut self, obj: HeapObj) {
        let handle = self.alloc(obj);
        self.stack.push(handle);
    }

    fn put(&mut self, index: u32) -> PResult<()> {
        let top = self.peek()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u32) -> PResult<()> {
        let Some(&value) = self.memo.get(&index) else {
            return fail(format!("memo entry {index} is read before it is written"));
        };
        self.stack.push(value);
        Ok(())
    }

    fn heap_obj(&self, obj: Obj) -> PResult<&HeapObj> {
        match obj {
            Obj::Heap(i) => self.heap.get(i).map_or_else(|| fail("dangling object handle"), Ok),
            other => fail(format!("expected an object, found {}", self.kind(other))),
        }
    }

    fn heap_mut(&mut self, obj: Obj) -> PResult<&mut HeapObj> {
        match obj {
            Obj::Heap(i) => self.heap.get_mut(i).map_or_else(|| fail("dangling object handle"), Ok),
            _ => fail("expected a mutable container"),
        }
    }

    fn kind(&self, obj: Obj) -> String {
        match obj {
            Obj::None => "None".into(),
            Obj::Bool(_) => "bool".into(),
            Obj::Int(_) => "int".into(),
            Obj::Float(_) => "float".into(),
            Obj::Global(g) => g.name(),
            Obj::Heap(i) => self.heap.get(i).map_or("?", HeapObj::kind).into(),
        }
    }

    // ----- typed access to operands -----

    fn str(&self, obj: Obj) -> PResult<&str> {
        match self.heap_obj(obj)? {
            HeapObj::Str(s) => Ok(s),
            other => fail(format!("expected a str, found a {}", other.kind())),
        }
    }

    /// The items of a tuple or list.
    fn items(&self, obj: Obj) -> PResult<&[Obj]> {
        match self.heap_obj(obj)? {
            HeapObj::Tuple(items) | HeapObj::List(items) => Ok(items),
            other => fail(format!("expected a tuple, found a {}", other.kind())),
        }
    }

    fn usize(&self, obj: Obj, what: &str) -> PResult<usize> {
        match obj {
            Obj::Int(i) => usize::try_from(i).or_else(|_| fail(format!("{what} is negative ({i})"))),
            other => fail(format!("{what} is a {}, not an int", self.kind(other))),
        }
    }

    /// Copies the items of a tuple or list, against the copy budget.
    fn copy_items(&mut self, obj: Obj) -> PResult<Vec<Obj>> {
        let items = self.items(obj)?.to_vec();
        self.charge(items.len())?;
        Ok(items)
    }

    fn usizes(&mut self, obj: Obj, what: &str) -> PResult<Vec<usize>> {
        self.copy_items(obj)?.into_iter().map(|o| self.usize(o, what)).collect()
    }

    /// A copy of a str operand, against the copy budget.
    fn copy_str(&mut self, obj: Obj) -> PResult<String> {
        let text = self.str(obj)?.to_owned();
        self.charge(1 + text.len())?;
        Ok(text)
    }

    /// Takes `units` (items or bytes copied) from the copy budget: every copy the VM makes of data that
    /// is already in its heap goes through here, so the pickle's length bounds what it can build.
    fn charge(&mut self, units: usize) -> PResult<()> {
        let Some(left) = self.copy_budget.checked_sub(units) else {
            return fail("the pickle copies far more data than it holds (corrupt or hostile file)");
        };
        self.copy_budget = left;
        Ok(())
    }

    // ----- opcode helpers -----

    /// LONG1/LONG4: little-endian two's complement; wider than 64 bits becomes a skipped note.
    fn push_long(&mut self, n: u64) -> PResult<()> {
        let bytes = self.r.take(n)?;
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let fill = if negative { 0xff } else { 0 };
        let (low, high) = bytes.split_at(bytes.len().min(8));
        let mut buf = [fill; 8];
        buf[..low.len()].copy_from_slice(low);
        let value = i64::from_le_bytes(buf);
        if high.iter().all(|&b| b == fill) && (value < 0) == negative {
            self.stack.push(Obj::Int(value));
        } else {
            self.push_heap(HeapObj::Skipped("an integer wider than 64 bits".into()));
        }
        Ok(())
    }

    fn push_text_int(&mut self) -> PResult<()> {
        match self.r.line()? {
            "01" => self.stack.push(Obj::Bool(true)),
            "00" => self.stack.push(Obj::Bool(false)),
            text => self.push_int_text(text)?,
        }
        Ok(())
    }

    fn push_int_text(&mut self, text: &str) -> PResult<()> {
        let trimmed = text.trim();
        match trimmed.parse::<i64>() {
            Ok(value) => self.stack.push(Obj::Int(value)),
            Err(_) if !trimmed.is_empty() && trimmed.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) => {
                self.push_heap(HeapObj::Skipped("an integer wider than 64 bits".into()))
            }
            Err(_) => return fail(format!("bad INT/LONG operand {text:?}")),
        }
        Ok(())
    }

    fn push_str(&mut self, len: u64) -> PResult<()> {
        let bytes = self.r.take(len)?;
        self.push_heap(HeapObj::Str(String::from_utf8_lossy(bytes).into_owned()));
        Ok(())
    }

    /// Python 2 `str` operands (BINSTRING): each byte is one character.
    fn push_latin1(&mut self, len: u64) -> PResult<()> {
        let bytes = self.r.take(len)?;
        self.push_heap(HeapObj::Str(bytes.iter().map(|&b| char::from(b)).collect()));
        Ok(())
    }

    fn push_bytes(&mut self, len: u64) -> PResult<()> {
        let bytes = self.r.take(len)?.to_vec();
        self.push_heap(HeapObj::Bytes(bytes));
        Ok(())
    }

    /// APPEND, APPENDS and ADDITEMS: the target is the list (or set) now on top of the stack.
    fn extend_list(&mut self, items: Vec<Obj>) -> PResult<()> {
        let target = self.peek()?;
        let kind = self.kind(target);
        match self.heap_mut(target) {
            Ok(HeapObj::List(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => fail(format!("cannot append to a {kind}")),
        }
    }

    /// SETITEM and SETITEMS: the target is the dict now on top of the stack.
    fn set_items(&mut self, items: Vec<Obj>) -> PResult<()> {
        let pairs = pairs(items)?;
        let target = self.peek()?;
        let kind = self.kind(target);
        match self.heap_mut(target) {
            Ok(HeapObj::Dict(dict)) => {
                dict.extend(pairs);
                Ok(())
            }
            _ => fail(format!("cannot set items on a {kind}")),
        }
    }
}

/// Pairs up SETITEMS / DICT operands.
fn pairs(items: Vec<Obj>) -> PResult<Vec<(Obj, Obj)>> {
    if !items.len().is_multiple_of(2) {
        return fail("odd number of dict keys and values");
    }
    Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
}

/// Adds the opcode and its offset to a format error; forbidden globals keep their plain name.
fn context(error: PickleError, op: u8, at: usize) -> PickleError {
    match error {
        PickleError::Format(msg) if msg == "unknown pickle opcode" => {
            PickleError::Format(format!("unknown pickle opcode 0x{op:02x} at byte {at} of data.pkl"))
        }
        PickleError::Format(msg) => PickleError::Format(format!("{msg} ({} at byte {at} of data.pkl)", op_name(op))),
        forbidden => forbidden,
    }
}
