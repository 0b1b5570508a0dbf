//! The allow-list of globals, and what calling each one builds: tensors from storages, dicts, namespaces.

use super::{fail, HeapObj, Obj, PResult, PickleError, StorageRef, Vm};
use crate::pth::tensor::{self, TorchDType, View};

/// The allow-listed globals. Each is either a pure constructor or a marker that is only ever passed as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Global {
    RebuildTensorV2,
    /// `_rebuild_tensor_v3`: like v2, over an untyped (byte) storage, with the dtype as an extra argument.
    RebuildTensorV3,
    RebuildTensor,
    RebuildParameter,
    RebuildFromTypeV2,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`, as the type argument of `_rebuild_from_type_v2`.
    TensorClass,
    OrderedDict,
    Namespace,
    Set,
    Encode,
    Size,
    Device,
    Storage(TorchDType),
    DType(TorchDType),
}

impl Global {
    /// The allow-list; `module` already uses Python 3 names.
    pub(super) fn lookup(module: &str, name: &str) -> Option<Global> {
        use Global::*;
        Some(match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => RebuildTensorV3,
            ("torch._utils", "_rebuild_tensor") => RebuildTensor,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => RebuildParameter,
            ("torch._tensor", "_rebuild_from_type_v2") => RebuildFromTypeV2,
            ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => TensorClass,
            ("collections", "OrderedDict") => OrderedDict,
            ("argparse", "Namespace") => Namespace,
            ("builtins", "set" | "frozenset") => Set,
            ("_codecs", "encode") => Encode,
            ("torch", "Size") => Size,
            ("torch", "device") => Device,
            ("torch", name) => {
                return TorchDType::from_storage_class(name)
                    .map(Storage)
                    .or_else(|| TorchDType::from_dtype_name(name).map(DType))
            }
            _ => return None,
        })
    }

    /// A readable name, for messages and for markers left in the data (e.g. `torch.float16` in an args dict).
    pub(super) fn name(self) -> String {
        use Global::*;
        match self {
            RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            RebuildTensorV3 => "torch._utils._rebuild_tensor_v3".into(),
            RebuildTensor => "torch._utils._rebuild_tensor".into(),
            RebuildParameter => "torch._utils._rebuild_parameter".into(),
            RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2".into(),
            TensorClass => "torch.Tensor".into(),
            OrderedDict => "collections.OrderedDict".into(),
            Namespace => "argparse.Namespace".into(),
            Set => "builtins.set".into(),
            Encode => "_codecs.encode".into(),
            Size => "torch.Size".into(),
            Device => "torch.device".into(),
            Storage(dtype) => format!("torch storage class ({})", dtype.name()),
            DType(dtype) => format!("torch.{}", dtype.name()),
        }
    }
}

/// Maps Python 2 module names (protocol 2 pickles use them) to Python 3 ones, then checks the allow-list.
pub(super) fn resolve_global(module: &str, name: &str) -> PResult<Global> {
    let module = match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        other => other,
    };
    Global::lookup(module, name).ok_or_else(|| PickleError::Forbidden(format!("{module}.{name}")))
}

impl Vm<'_> {
    /// BUILD: sets an object's state. Only a Namespace keeps it (as its attributes); the attributes of dicts and
    /// tensors (e.g. a state dict's `_metadata`) hold no weights and are dropped.
    pub(super) fn build(&mut self) -> PResult<()> {
        let state = self.pop()?;
        let target = self.peek()?;
        match self.heap_obj(target)? {
            HeapObj::Namespace(_) => {
                // Repeated BUILDs with one shared state dict would otherwise copy it again and again for free.
                let attrs = self.namespace_attrs(state)?;
                let cost = attrs.iter().map(|(name, _)| 1 + name.len()).sum();
                self.charge(cost)?;
                if let HeapObj::Namespace(fields) = self.heap_mut(target)? {
                    fields.extend(attrs);
                }
                Ok(())
            }
            HeapObj::Dict(_) | HeapObj::Tensor(_) | HeapObj::Skipped(_) => Ok(()),
            other => fail(format!("BUILD on a {} is not supported", other.kind())),
        }
    }

    /// A Namespace's BUILD state: its `__dict__`, or a `(dict, slots)` pair.
    fn namespace_attrs(&self, state: Obj) -> PResult<Vec<(String, Obj)>> {
        let dicts: Vec<Obj> = match self.heap_obj(state)? {
            HeapObj::Dict(_) => vec![state],
            HeapObj::Tuple(parts) => parts.iter().copied().filter(|o| !matches!(o, Obj::None)).collect(),
            other => return fail(format!("argparse.Namespace state is a {}, not a dict", other.kind())),
        };
        let mut attrs = vec![];
        for dict in dicts {
            let HeapObj::Dict(pairs) = self.heap_obj(dict)? else {
                return fail("argparse.Namespace state is not a dict");
            };
            for &(key, value) in pairs {
                attrs.push((self.str(key)?.to_owned(), value));
            }
        }
        Ok(attrs)
    }

    /// BINPERSID: torch.save's `('storage', storage_type, key, location, numel)`.
    pub(super) fn persistent_storage(&mut self, pid: Obj) -> PResult<StorageRef> {
        let &[tag, storage_type, key, _location, numel] = self.items(pid)? else {
            return fail("persistent id is not a 5-tuple ('storage', type, key, location, numel)");
        };
        if self.str(tag)? != "storage" {
            return fail(format!("persistent id of kind {:?} is not a storage", self.str(tag)?));
        }
        let dtype = match storage_type {
            Obj::Global(Global::Storage(dtype) | Global::DType(dtype)) => dtype,
            other => return fail(format!("persistent id names a {} instead of a storage type", self.kind(other))),
        };
        let numel = self.usize(numel, "storage size")?;
        let key = self.copy_str(key)?;
        Ok(StorageRef { dtype, key, numel })
    }

    // ----- calling allow-listed globals -----

    pub(super) fn call(&mut self, callable: Obj, args: &[Obj]) -> PResult<Obj> {
        let Obj::Global(global) = callable else {
            return fail(format!("the pickle calls a {}, which is not an allow-listed function", self.kind(callable)));
        };
        match (global, args) {
            (Global::RebuildTensorV2 | Global::RebuildTensor, _) => self.rebuild_tensor(args),
            (Global::RebuildTensorV3, &[_, _, _, _, _, _, dtype, ..]) => self.rebuild_tensor_v3(args, dtype),
            (Global::RebuildParameter, [data, ..]) => Ok(*data),
            (Global::RebuildFromTypeV2, &[func, class, inner, _state]) => {
                // Only the plain rebuild functions may be wrapped: recursion here would follow the pickle's nesting.
                let plain = matches!(
                    func,
                    Obj::Global(Global::RebuildTensorV2 | Global::RebuildTensor | Global::RebuildParameter)
                );
                if !plain || !matches!(class, Obj::Global(Global::TensorClass)) {
                    return fail("_rebuild_from_type_v2 is only allowed for plain tensors and parameters");
                }
                let inner = self.copy_items(inner)?;
                self.call(func, &inner)
            }
            (Global::OrderedDict, []) => Ok(self.alloc(HeapObj::Dict(vec![]))),
            (Global::OrderedDict, &[items]) => {
                let items = self.copy_items(items)?;
                let pairs = items.into_iter().map(|pair| self.pair(pair)).collect::<PResult<_>>()?;
                Ok(self.alloc(HeapObj::Dict(pairs)))
            }
            (Global::Namespace, []) => Ok(self.alloc(HeapObj::Namespace(vec![]))),
            (Global::Set, []) => Ok(self.alloc(HeapObj::List(vec![]))),
            (Global::Set, &[items]) => {
                let items = self.copy_items(items)?;
                Ok(self.alloc(HeapObj::List(items)))
            }
            (Global::Encode, &[text, ..]) => self.encode(text, args.get(1).copied()),
            (Global::Size, &[dims]) => {
                let dims = self.usizes(dims, "torch.Size dimension")?;
                let dims = dims.into_iter().map(|d| Obj::Int(d as i64)).collect();
                Ok(self.alloc(HeapObj::Tuple(dims)))
            }
            (Global::Device, [kind, index @ ..]) => {
                let mut name = self.copy_str(*kind)?;
                if let Some(&Obj::Int(i)) = index.first() {
                    name = format!("{name}:{i}");
                }
                Ok(self.alloc(HeapObj::Str(name)))
            }
            _ => fail(format!(
                "the pickle calls {} with {} arguments, which this reader does not rebuild",
                global.name(),
                args.len()
            )),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
    fn rebuild_tensor(&mut self, args: &[Obj]) -> PResult<Obj> {
        let &[storage, offset, size, stride, ..] = args else {
            return fail(format!(
                "_rebuild_tensor_v2 expects (storage, offset, size, stride, ...), got {} arguments",
                args.len()
            ));
        };
        let storage = match self.heap_obj(storage)? {
            HeapObj::Storage(s) => s.clone(),
            other => return fail(format!("_rebuild_tensor_v2 got a {} instead of a storage", other.kind())),
        };
        self.charge(1 + storage.key.len())?;
        let view = View {
            offset: self.usize(offset, "tensor storage offset")?,
            size: self.usizes(size, "tensor size")?,
            stride: self.usizes(stride, "tensor stride")?,
        };
        if let TorchDType::Unsupported(_) = storage.dtype {
            return Ok(self.alloc(HeapObj::Skipped(tensor::unsupported_note(storage.dtype, &view.size))));
        }
        let tensor = self.source.tensor(&storage, &view).map_err(PickleError::Format)?;
        Ok(self.alloc(HeapObj::Tensor(tensor)))
    }

    /// `_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])`: the storage
    /// is untyped (its size counts bytes), so the element type comes from `dtype`.
    fn rebuild_tensor_v3(&mut self, args: &[Obj], dtype: Obj) -> PResult<Obj> {
        let Obj::Global(Global::DType(dtype)) = dtype else {
            return fail(format!("_rebuild_tensor_v3 got a {} instead of a dtype", self.kind(dtype)));
        };
        let Some(&Obj::Heap(storage)) = args.first() else { return fail("_rebuild_tensor_v3 without a storage") };
        if let Some(HeapObj::Storage(s)) = self.heap.get(storage) {
            // Re-type the storage (a fresh copy: other tensors may view the same bytes with another dtype).
            let numel = s.numel / dtype.elem_size().unwrap_or(1);
            let typed = StorageRef { dtype, key: s.key.clone(), numel };
            self.charge(1 + typed.key.len() + args.len())?;
            let mut args = args.to_vec();
            args[0] = self.alloc(HeapObj::Storage(typed));
            return self.rebuild_tensor(&args);
        }
        self.rebuild_tensor(args)
    }

    /// `_codecs.encode(text, encoding)`: how protocol 2 pickles store `bytes`.
    fn encode(&mut self, text: Obj, encoding: Option<Obj>) -> PResult<Obj> {
        let encoding = match encoding {
            Some(e) => self.str(e)?.to_ascii_lowercase(),
            None => "utf-8".into(),
        };
        let text = self.str(text)?;
        let bytes = match encoding.as_str() {
            "latin1" | "latin-1" | "iso-8859-1" => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)))
                .collect::<Result<Vec<u8>, _>>()
                .or_else(|_| fail("latin1 text out of range"))?,
            "utf-8" | "utf8" => text.as_bytes().to_vec(),
            other => return fail(format!("_codecs.encode with encoding {other:?} is not supported")),
        };
        self.charge(bytes.len())?;
        Ok(self.alloc(HeapObj::Bytes(bytes)))
    }

    fn pair(&self, pair: Obj) -> PResult<(Obj, Obj)> {
        match self.items(pair)? {
            &[key, value] => Ok((key, value)),
            _ => fail("OrderedDict item is not a (key, value) pair"),
        }
    }
}
