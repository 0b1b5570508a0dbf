//! Checks a zip's end records against the file's real length before the `zip` crate reads them.
//!
//! `zip` (2.x, and 9.x alike) pre-allocates its table of entries from the entry count of a ZIP64 end
//! record, bounded only by numbers from the same forged header: a 1 KB file can ask for terabytes, and the
//! failed allocation aborts the process. It also tries every end-record candidate in the file, from the
//! end backwards, when a later one fails to parse. So every candidate is checked here: a ZIP64 record
//! whose entry count or directory does not fit in the file makes the whole file corrupt.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use zip::ZipArchive;

use crate::error::{Error, Result};

const EOCD_SIG: &[u8; 4] = b"PK\x05\x06";
const LOCATOR_SIG: &[u8; 4] = b"PK\x06\x07";
const EOCD64_SIG: &[u8; 4] = b"PK\x06\x06";
/// A ZIP64 end-of-central-directory locator sits right before the end record.
const LOCATOR_LEN: u64 = 20;
/// Every central directory header is at least this long, so a file of n bytes holds < n/46 entries.
const MIN_CENTRAL_HEADER: u64 = 46;
const CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub enum GuardError {
    Io(std::io::Error),
    Implausible(String),
}

impl From<std::io::Error> for GuardError {
    fn from(e: std::io::Error) -> Self {
        GuardError::Io(e)
    }
}

/// Opens a zip archive (`.pth`, `.npz`) whose end records were checked first; returns it with the file's
/// length. Every error names the file.
pub fn open_zip(path: &Path) -> Result<(ZipArchive<BufReader<File>>, u64)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    check_end_records(&mut reader, len).map_err(|e| match e {
        GuardError::Io(e) => Error::io(path, e),
        GuardError::Implausible(msg) => Error::format(path, msg),
    })?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let zip = ZipArchive::new(reader)
        .map_err(|e| Error::format(path, format!("not a readable zip archive (truncated or corrupt?): {e}")))?;
    Ok((zip, len))
}

/// Refuses a file whose ZIP64 end records claim more entries or directory bytes than it can hold.
pub fn check_end_records<R: Read + Seek>(file: &mut R, file_len: u64) -> std::result::Result<(), GuardError> {
    for eocd in signature_offsets(file, EOCD_SIG)? {
        check_candidate(file, eocd, file_len)?;
    }
    Ok(())
}

/// Offsets of every occurrence of `sig` in the file, read in chunks that overlap by `sig.len() - 1`.
fn signature_offsets<R: Read + Seek>(file: &mut R, sig: &[u8; 4]) -> std::io::Result<Vec<u64>> {
    file.seek(SeekFrom::Start(0))?;
    let finder = memchr::memmem::Finder::new(sig);
    let (mut found, mut buf, mut base) = (Vec::new(), vec![0u8; CHUNK + 3], 0u64);
    let mut kept = 0; // bytes carried over from the previous chunk
    loop {
        let n = read_up_to(file, &mut buf[kept..])?;
        let len = kept + n;
        found.extend(finder.find_iter(&buf[..len]).map(|at| base + at as u64));
        if n == 0 {
            return Ok(found);
        }
        let carry = len.min(3);
        buf.copy_within(len - carry..len, 0);
        base += (len - carry) as u64;
        kept = carry;
    }
}

/// One end record at `eocd`: if a ZIP64 locator precedes it and names a ZIP64 record, that record's
/// entry count and directory must fit in the file.
fn check_candidate<R: Read + Seek>(file: &mut R, eocd: u64, file_len: u64) -> std::result::Result<(), GuardError> {
    let Some(locator_at) = eocd.checked_sub(LOCATOR_LEN) else { return Ok(()) };
    let locator: [u8; 20] = read_at(file, locator_at)?;
    if &locator[..4] != LOCATOR_SIG {
        return Ok(());
    }
    let record_at = u64::from_le_bytes(locator[8..16].try_into().expect("8 bytes"));
    if record_at >= file_len {
        return Err(implausible(format!("its ZIP64 end record is said to start at byte {record_at}"), file_len));
    }
    let Ok(record) = read_at::<_, 56>(file, record_at) else { return Ok(()) };
    if &record[..4] != EOCD64_SIG {
        return Ok(());
    }
    let word = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"));
    let (entries, dir_size, dir_start) = (word(32), word(40), word(48));
    if entries > file_len / MIN_CENTRAL_HEADER {
        return Err(implausible(format!("its ZIP64 end record claims {entries} entries"), file_len));
    }
    if dir_size > file_len || dir_start > file_len {
        return Err(implausible(
            format!("its ZIP64 end record claims a central directory of {dir_size} bytes at byte {dir_start}"),
            file_len,
        ));
    }
    Ok(())
}

fn implausible(what: String, file_len: u64) -> GuardError {
    GuardError::Implausible(format!("corrupt zip archive: {what}, more than a file of {file_len} bytes can hold"))
}

fn read_at<R: Read + Seek, const N: usize>(file: &mut R, at: u64) -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut out)?;
    Ok(out)
}

/// Fills `buf` as far as the reader goes; 0 only at the end.
fn read_up_to<R: Read>(file: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A local-header magic, `pad` bytes of filler, then a ZIP64 record + locator + EOCD claiming
    /// `entries` entries.
    pub(crate) fn forged_zip64(pad: usize, entries: u64) -> Vec<u8> {
        let mut f = b"PK\x03\x04".to_vec();
        f.extend(vec![0u8; pad]);
        let record_at = f.len() as u64;
        f.extend_from_slice(EOCD64_SIG);
        f.extend_from_slice(&44u64.to_le_bytes()); // record size
        f.extend_from_slice(&[45, 0, 45, 0]); // versions
        f.extend_from_slice(&[0; 8]); // disk numbers
        f.extend_from_slice(&entries.to_le_bytes()); // entries on this disk
        f.extend_from_slice(&entries.to_le_bytes()); // entries
        f.extend_from_slice(&(entries * 46).to_le_bytes()); // directory size
        f.extend_from_slice(&(entries * 50).to_le_bytes()); // directory start
        f.extend_from_slice(LOCATOR_SIG);
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&record_at.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(EOCD_SIG);
        f.extend_from_slice(&[0xff; 16]);
        f.extend_from_slice(&0u16.to_le_bytes());
        f
    }

    #[test]
    fn a_zip64_record_claiming_terabytes_of_entries_is_refused() {
        let f = forged_zip64(64, 1 << 40);
        let e = check_end_records(&mut Cursor::new(&f), f.len() as u64).unwrap_err();
        assert!(matches!(&e, GuardError::Implausible(m) if m.contains("1099511627776 entries")), "{e:?}");
    }

    #[test]
    fn a_plausible_zip64_record_passes() {
        let f = forged_zip64(64, 1);
        check_end_records(&mut Cursor::new(&f), f.len() as u64).unwrap();
    }

    #[test]
    fn signatures_straddling_chunk_borders_are_found() {
        let mut f = vec![0u8; 3 * CHUNK];
        for at in [CHUNK - 2, 2 * CHUNK - 1, 3 * CHUNK - 4] {
            f[at..at + 4].copy_from_slice(EOCD_SIG);
        }
        let found = signature_offsets(&mut Cursor::new(&f), EOCD_SIG).unwrap();
        assert_eq!(found, vec![(CHUNK - 2) as u64, (2 * CHUNK - 1) as u64, (3 * CHUNK - 4) as u64]);
    }
}
