//! Copying the VM's heap graph out into `PthValue`s, with a depth cap and a size budget.

use super::{fail, HeapObj, Obj, PResult};
use crate::pth::PthValue;
use std::collections::HashMap;

/// Deeper nesting than this is refused (real checkpoints nest a handful of levels).
const MAX_DEPTH: usize = 256;

/// Copies `root` out of the heap. The budget grows with the pickle's length: without sharing, every value
/// costs at least a byte of pickle, so only shared references expanding into huge trees run out of it.
pub(super) fn to_value(heap: &[HeapObj], root: Obj, pickle_len: usize) -> PResult<PthValue> {
    let budget = pickle_len.saturating_mul(2).saturating_add(1_000_000);
    Resolver { heap, budget }.resolve(root, 0)
}

/// Copies the heap graph out into plain values.
struct Resolver<'h> {
    heap: &'h [HeapObj],
    /// Values (and 16-byte chunks of strings) still allowed; shared references cannot blow up past it.
    budget: usize,
}

impl Resolver<'_> {
    fn spend(&mut self, units: usize) -> PResult<()> {
        self.budget = self
            .budget
            .checked_sub(units)
            .map_or_else(|| fail("the pickle's shared references expand to far more data than the file holds"), Ok)?;
        Ok(())
    }

    fn resolve(&mut self, obj: Obj, depth: usize) -> PResult<PthValue> {
        if depth > MAX_DEPTH {
            return fail(format!("objects nested deeper than {MAX_DEPTH} levels (or a self-referencing structure)"));
        }
        self.spend(1)?;
        let heap = self.heap;
        Ok(match obj {
            Obj::None => PthValue::None,
            Obj::Bool(b) => PthValue::Bool(b),
            Obj::Int(i) => PthValue::Int(i),
            Obj::Float(f) => PthValue::Float(f),
            Obj::Global(g) => PthValue::Skipped(g.name()),
            Obj::Heap(i) => match heap.get(i) {
                None => return fail("dangling object handle"),
                Some(HeapObj::Str(s)) => {
                    self.spend(s.len() / 16)?;
                    PthValue::Str(s.clone())
                }
                Some(HeapObj::Bytes(b)) => {
                    self.spend(b.len() / 16)?;
                    PthValue::Bytes(b.clone())
                }
                Some(HeapObj::List(items)) => PthValue::List(self.resolve_all(items, depth)?),
                Some(HeapObj::Tuple(items)) => PthValue::Tuple(self.resolve_all(items, depth)?),
                Some(HeapObj::Dict(pairs)) => {
                    let mut out = Vec::with_capacity(pairs.len());
                    for (key, value) in dedup_keys(heap, pairs) {
                        out.push((self.resolve(key, depth + 1)?, self.resolve(value, depth + 1)?));
                    }
                    PthValue::Dict(out)
                }
                Some(HeapObj::Namespace(attrs)) => {
                    let mut out = Vec::with_capacity(attrs.len());
                    for (name, value) in attrs {
                        out.push((name.clone(), self.resolve(*value, depth + 1)?));
                    }
                    PthValue::Namespace(out)
                }
                Some(HeapObj::Tensor(t)) => PthValue::Tensor(t.clone()),
                Some(HeapObj::Storage(s)) => PthValue::Skipped(format!("storage '{}' ({})", s.key, s.dtype.name())),
                Some(HeapObj::Skipped(note)) => PthValue::Skipped(note.clone()),
            },
        })
    }

    fn resolve_all(&mut self, items: &[Obj], depth: usize) -> PResult<Vec<PthValue>> {
        items.iter().map(|&item| self.resolve(item, depth + 1)).collect()
    }
}

/// Python dict semantics: a repeated key keeps its first position and takes the last value.
fn dedup_keys(heap: &[HeapObj], pairs: &[(Obj, Obj)]) -> Vec<(Obj, Obj)> {
    #[derive(PartialEq, Eq, Hash)]
    enum Key<'h> {
        Int(i64),
        Str(&'h str),
    }
    let key_of = |obj: Obj| match obj {
        Obj::Int(i) => Some(Key::Int(i)),
        Obj::Bool(b) => Some(Key::Int(i64::from(b))),
        Obj::Heap(i) => match heap.get(i) {
            Some(HeapObj::Str(s)) => Some(Key::Str(s)),
            _ => None,
        },
        _ => None,
    };
    let mut out: Vec<(Obj, Obj)> = Vec::with_capacity(pairs.len());
    let mut seen: HashMap<Key, usize> = HashMap::new();
    for &(key, value) in pairs {
        match key_of(key) {
            Some(k) => match seen.get(&k) {
                Some(&at) => out[at].1 = value,
                None => {
                    seen.insert(k, out.len());
                    out.push((key, value));
                }
            },
            None => out.push((key, value)),
        }
    }
    out
}
