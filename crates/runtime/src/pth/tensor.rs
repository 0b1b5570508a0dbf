//! Torch storage dtypes, and rebuilding one (possibly strided) tensor view from the raw bytes of its storage.

use candle_core::{DType, Device, Shape, Tensor};

/// Prefix of the `PthValue::Skipped` note left for a tensor whose dtype Candle cannot hold. `tensors()` and
/// `bare_tensor()` turn it into an error naming the tensor, so such a tensor is never dropped silently.
pub(super) const UNSUPPORTED_TENSOR: &str = "unsupported tensor: ";

/// A stride-0 (expanded) view may describe more elements than its storage holds; this caps what such a view
/// may allocate, so a tiny hostile file cannot ask for terabytes.
const MAX_EXPANDED_BYTES: usize = 1 << 30;

/// The element type of a torch storage, as named by its storage class (`torch.FloatStorage`) or dtype object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TorchDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    /// int8: widened to I64 (Candle has no I8).
    I8,
    U8,
    /// bool: returned as U8 0/1 (Candle has no bool dtype).
    Bool,
    /// A dtype Candle cannot represent (complex, quantized); the tensor becomes an unsupported-tensor note.
    Unsupported(&'static str),
}

impl TorchDType {
    /// From the name of a storage class in module `torch`, e.g. `FloatStorage`.
    pub fn from_storage_class(name: &str) -> Option<Self> {
        use TorchDType::*;
        Some(match name {
            "DoubleStorage" => F64,
            "FloatStorage" => F32,
            "HalfStorage" => F16,
            "BFloat16Storage" => BF16,
            "LongStorage" => I64,
            "IntStorage" => I32,
            "ShortStorage" => I16,
            "CharStorage" => I8,
            "ByteStorage" | "UntypedStorage" => U8,
            "BoolStorage" => Bool,
            "ComplexHalfStorage" => Unsupported("complex32"),
            "ComplexFloatStorage" => Unsupported("complex64"),
            "ComplexDoubleStorage" => Unsupported("complex128"),
            "QInt8Storage" => Unsupported("qint8"),
            "QUInt8Storage" => Unsupported("quint8"),
            "QInt32Storage" => Unsupported("qint32"),
            "QUInt4x2Storage" => Unsupported("quint4x2"),
            "QUInt2x4Storage" => Unsupported("quint2x4"),
            _ => return None,
        })
    }

    /// From the name of a dtype object in module `torch`, e.g. `float32` (or its alias `float`).
    pub fn from_dtype_name(name: &str) -> Option<Self> {
        use TorchDType::*;
        Some(match name {
            "float64" | "double" => F64,
            "float32" | "float" => F32,
            "float16" | "half" => F16,
            "bfloat16" => BF16,
            "int64" | "long" => I64,
            "int32" | "int" => I32,
            "int16" | "short" => I16,
            "int8" => I8,
            "uint8" => U8,
            "bool" => Bool,
            "complex64" | "cfloat" => Unsupported("complex64"),
            "complex128" | "cdouble" => Unsupported("complex128"),
            "uint16" => Unsupported("uint16"),
            "uint32" => Unsupported("uint32"),
            "uint64" => Unsupported("uint64"),
            "float8_e4m3fn" => Unsupported("float8_e4m3fn"),
            "float8_e5m2" => Unsupported("float8_e5m2"),
            _ => return None,
        })
    }

    /// The torch name, for messages.
    pub fn name(self) -> &'static str {
        use TorchDType::*;
        match self {
            F64 => "float64",
            F32 => "float32",
            F16 => "float16",
            BF16 => "bfloat16",
            I64 => "int64",
            I32 => "int32",
            I16 => "int16",
            I8 => "int8",
            U8 => "uint8",
            Bool => "bool",
            Unsupported(name) => name,
        }
    }

    /// Bytes per element in the storage; None for unsupported dtypes (whose bytes are never read).
    pub fn elem_size(self) -> Option<usize> {
        use TorchDType::*;
        match self {
            F64 | I64 => Some(8),
            F32 | I32 => Some(4),
            F16 | BF16 | I16 => Some(2),
            I8 | U8 | Bool => Some(1),
            Unsupported(_) => None,
        }
    }
}

/// The note stored instead of a tensor whose dtype Candle cannot hold.
pub(super) fn unsupported_note(dtype: TorchDType, size: &[usize]) -> String {
    format!(
        "{UNSUPPORTED_TENSOR}dtype {} with shape {size:?} (Candle cannot hold it; convert it in PyTorch first)",
        dtype.name()
    )
}

/// Which elements of a storage a tensor sees: `_rebuild_tensor_v2`'s offset, size and stride, in elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct View {
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

impl View {
    /// Element count, None if it overflows.
    pub fn numel(&self) -> Option<usize> {
        self.size.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n))
    }

    /// Checks that every element the view reaches lies inside a storage of `storage_len` elements, and that the
    /// result is not absurdly large; returns the element count.
    fn checked_numel(&self, storage_len: usize, elem_size: usize) -> Result<usize, String> {
        if self.size.len() != self.stride.len() {
            return Err(format!("tensor size {:?} and stride {:?} differ in length", self.size, self.stride));
        }
        let overflow = || format!("tensor size {:?} / stride {:?} overflows", self.size, self.stride);
        let numel = self.numel().ok_or_else(overflow)?;
        if numel == 0 {
            return Ok(0);
        }
        let last = self
            .size
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (&n, &s)| (n - 1).checked_mul(s)?.checked_add(acc))
            .ok_or_else(overflow)?;
        if last >= storage_len {
            return Err(format!(
                "tensor view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {storage_len} elements",
                self.offset, self.size, self.stride
            ));
        }
        let bytes = numel.checked_mul(elem_size).ok_or_else(overflow)?;
        if numel > storage_len && bytes > MAX_EXPANDED_BYTES {
            return Err(format!(
                "tensor view of size {:?} expands a storage of {storage_len} elements to {bytes} bytes (limit {MAX_EXPANDED_BYTES})",
                self.size
            ));
        }
        Ok(numel)
    }

    /// Row-major contiguous (strides of size-1 dimensions do not matter, as in torch).
    fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&n, &s) in self.size.iter().zip(&self.stride).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(n);
        }
        true
    }
}

/// Builds a contiguous CPU tensor from the raw bytes of one storage (`big_endian` as the archive's `byteorder`).
pub(super) fn rebuild(storage: &[u8], dtype: TorchDType, view: &View, big_endian: bool) -> Result<Tensor, String> {
    let es = dtype.elem_size().ok_or_else(|| unsupported_note(dtype, &view.size))?;
    let numel = view.checked_numel(storage.len() / es, es)?;
    let mut bytes = gather(storage, es, view, numel)?;
    if big_endian && es > 1 {
        bytes.chunks_exact_mut(es).for_each(|element| element.reverse());
    }
    to_candle(&bytes, dtype, &view.size)
        .map_err(|e| format!("building a {} tensor of shape {:?}: {e}", dtype.name(), view.size))
}

/// Copies the view's elements, in row-major order, out of the storage. `numel` was checked by `checked_numel`.
fn gather(storage: &[u8], es: usize, view: &View, numel: usize) -> Result<Vec<u8>, String> {
    let out_of_bounds = || format!("tensor view {view:?} leaves its storage");
    if numel == 0 {
        return Ok(Vec::new());
    }
    if view.is_contiguous() {
        let start = view.offset * es;
        return storage.get(start..start + numel * es).map(<[u8]>::to_vec).ok_or_else(out_of_bounds);
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut index = vec![0usize; view.size.len()];
    let mut pos = view.offset; // element position in the storage
    for _ in 0..numel {
        out.extend_from_slice(storage.get(pos * es..(pos + 1) * es).ok_or_else(out_of_bounds)?);
        // Odometer step; wrapping arithmetic is exact here because every position visited was bounds-checked.
        for d in (0..index.len()).rev() {
            index[d] += 1;
            pos = pos.wrapping_add(view.stride[d]);
            if index[d] < view.size[d] {
                break;
            }
            pos = pos.wrapping_sub(view.stride[d].wrapping_mul(view.size[d]));
            index[d] = 0;
        }
    }
    Ok(out)
}

/// Little-endian element bytes -> Candle tensor, widening the dtypes Candle lacks.
fn to_candle(bytes: &[u8], dtype: TorchDType, size: &[usize]) -> candle_core::Result<Tensor> {
    let (cpu, shape) = (Device::Cpu, Shape::from_dims(size));
    match dtype {
        TorchDType::Bool => Tensor::from_vec(bytes.iter().map(|&b| u8::from(b != 0)).collect::<Vec<u8>>(), shape, &cpu),
        TorchDType::I8 => {
            Tensor::from_vec(bytes.iter().map(|&b| i64::from(b as i8)).collect::<Vec<i64>>(), shape, &cpu)
        }
        other => Tensor::from_raw_buffer(bytes, candle_dtype(other), size, &cpu),
    }
}

/// The Candle dtype for dtypes stored as-is (little-endian hosts: `from_raw_buffer` reinterprets the bytes).
fn candle_dtype(dtype: TorchDType) -> DType {
    match dtype {
        TorchDType::F64 => DType::F64,
        TorchDType::F32 => DType::F32,
        TorchDType::F16 => DType::F16,
        TorchDType::BF16 => DType::BF16,
        TorchDType::I64 => DType::I64,
        TorchDType::I32 => DType::I32,
        TorchDType::I16 => DType::I16,
        // Bool and I8 are converted by `to_candle`; unsupported dtypes never reach here.
        TorchDType::U8 | TorchDType::Bool | TorchDType::I8 | TorchDType::Unsupported(_) => DType::U8,
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("the .pth reader hands little-endian storage bytes to Candle as-is; it needs a little-endian host");
