//! Zero-copy fetch responses, as Kafka's `FileChannel.transferTo`: the response header and
//! per-partition framing are encoded in memory, the records go from the segment files to the
//! socket with `sendfile(2)` and never pass through user space.
//!
//! The codec encodes a response from owned values, so each read region is first put in the
//! response as a placeholder: a slice of a static, never-written zero buffer, unique by its
//! address. A `BufMut` that knows the placeholders cuts the encoded response around them
//! instead of copying them, leaving memory parts and file parts in order. The buffer is
//! never touched: it costs address space, not memory.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use strom_storage::FileRegion;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The largest region sent by reference; a larger one (a huge first batch) is copied.
const PLACEHOLDER_SPACE: usize = 64 << 20;
/// An anonymous read-only mapping, never read or written: address space, no memory. Not
/// from the allocator, which would count 64 MiB against whatever request touched it first.
static ZEROS: std::sync::LazyLock<&'static [u8]> = std::sync::LazyLock::new(|| {
    // SAFETY: a fresh private anonymous mapping; the slice made from it lives for the
    // process (never unmapped) and is only ever compared by address.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            PLACEHOLDER_SPACE,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            // No address space: no region goes by reference (all are read).
            return &[];
        }
        std::slice::from_raw_parts(p as *const u8, PLACEHOLDER_SPACE)
    }
});

/// One piece of a response, in the order it goes on the wire.
#[derive(Debug, Clone)]
pub enum Part {
    Bytes(Bytes),
    File(FileRegion),
}

/// The regions a response refers to, by their placeholders.
#[derive(Default)]
pub struct Regions {
    by_address: HashMap<usize, FileRegion>,
}

impl Regions {
    /// A placeholder for `region` to put in the response where its bytes go, or `None` when
    /// the region is too large to stand in for (the caller reads it instead).
    pub fn placeholder(&mut self, region: FileRegion) -> Option<Bytes> {
        let len = region.len as usize;
        let at = self.by_address.len();
        let zeros: &'static [u8] = &ZEROS;
        if at + len > zeros.len() {
            return None;
        }
        let slice = &zeros[at..at + len];
        self.by_address.insert(slice.as_ptr() as usize, region);
        Some(Bytes::from_static(slice))
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    fn take(&mut self, src: &[u8]) -> Option<FileRegion> {
        let region = self.by_address.get(&(src.as_ptr() as usize))?;
        (region.len as usize == src.len())
            .then(|| self.by_address.remove(&(src.as_ptr() as usize)).unwrap())
    }
}

/// A `BufMut` that copies everything but the placeholders of `regions`, which become file
/// parts.
pub struct PartsBuf<'a> {
    current: BytesMut,
    parts: Vec<Part>,
    regions: &'a mut Regions,
}

impl<'a> PartsBuf<'a> {
    pub fn new(capacity: usize, regions: &'a mut Regions) -> Self {
        PartsBuf {
            current: BytesMut::with_capacity(capacity),
            parts: Vec::new(),
            regions,
        }
    }

    /// The parts, in order. A placeholder the encoder did not write (none should be left)
    /// is a bug: the response would miss bytes, so it panics in tests and debug builds.
    pub fn finish(mut self) -> Vec<Part> {
        debug_assert!(
            self.regions.is_empty(),
            "a region placeholder was not encoded"
        );
        if !self.current.is_empty() {
            self.parts.push(Part::Bytes(self.current.split().freeze()));
        }
        self.parts
    }

    pub fn len_so_far(&self) -> usize {
        self.current.len()
            + self
                .parts
                .iter()
                .map(|p| match p {
                    Part::Bytes(b) => b.len(),
                    Part::File(r) => r.len as usize,
                })
                .sum::<usize>()
    }
}

// SAFETY: every method forwards to the inner `BytesMut`, whose contract holds; `put_slice`
// either forwards too or writes nothing to it.
unsafe impl BufMut for PartsBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialized `cnt` bytes of the chunk `chunk_mut` gave it.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.regions.take(src) {
            Some(region) => {
                if !self.current.is_empty() {
                    self.parts.push(Part::Bytes(self.current.split().freeze()));
                }
                self.parts.push(Part::File(region));
            }
            None => self.current.put_slice(src),
        }
    }
}

/// Sends `region` from its file to `socket` with `sendfile(2)`, waiting whenever the socket
/// is full. A file that ends before the region does (a segment truncated under the fetch)
/// is an error: the response could not be completed and the connection must close.
pub async fn send_file(socket: &TcpStream, region: &FileRegion) -> io::Result<()> {
    let end = region.position + region.len;
    let mut offset = region.position as libc::off_t;
    while (offset as u64) < end {
        socket.writable().await?;
        let want = (end - offset as u64).min(1 << 30) as usize;
        let sent = socket.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call (the socket by
            // `socket`, the file by `region`'s Arc) and `offset` is a valid out-parameter.
            let n = unsafe {
                libc::sendfile(
                    socket.as_raw_fd(),
                    region.file.as_raw_fd(),
                    &mut offset,
                    want,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the segment file ended before the region sent from it",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    fn region(bytes: &[u8], position: u64, len: u64) -> FileRegion {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        FileRegion {
            file: Arc::new(f),
            position,
            len,
            next_offset: 0,
        }
    }

    #[test]
    fn placeholders_become_file_parts_and_everything_else_is_copied() {
        let mut regions = Regions::default();
        let a = regions.placeholder(region(b"0123456789", 2, 5)).unwrap();
        let b = regions.placeholder(region(b"abcdef", 0, 5)).unwrap();
        // Same length, different placeholders.
        assert_ne!(a.as_ptr(), b.as_ptr());
        let mut buf = PartsBuf::new(64, &mut regions);
        buf.put_slice(b"head");
        buf.put_slice(&a);
        buf.put_i32(7);
        buf.put_slice(&b);
        // Bytes equal to a placeholder's but elsewhere are copied.
        buf.put_slice(&[0u8; 5]);
        assert_eq!(buf.len_so_far(), 4 + 5 + 4 + 5 + 5);
        let parts = buf.finish();
        let shapes: Vec<String> = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => format!("bytes {}", b.len()),
                Part::File(r) => format!("file {}+{}", r.position, r.len),
            })
            .collect();
        assert_eq!(
            shapes,
            ["bytes 4", "file 2+5", "bytes 4", "file 0+5", "bytes 5"]
        );
    }

    #[test]
    fn a_region_too_large_for_a_placeholder_is_refused() {
        let mut regions = Regions::default();
        let huge = region(b"x", 0, PLACEHOLDER_SPACE as u64 + 1);
        assert!(regions.placeholder(huge).is_none());
        assert!(regions.is_empty());
    }

    #[tokio::test]
    async fn send_file_sends_exactly_the_region() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let r = region(&data, 1000, 2_500_000);
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got)
                .await
                .unwrap();
            got
        });
        let socket = TcpStream::connect(addr).await.unwrap();
        send_file(&socket, &r).await.unwrap();
        drop(socket);
        assert_eq!(reader.await.unwrap(), data[1000..2_501_000]);
        // A region past the file's end fails rather than sending less.
        let short = region(b"abc", 0, 10);
        let listener2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr2 = listener2.local_addr().unwrap();
        let _accept = tokio::spawn(async move { listener2.accept().await });
        let socket = TcpStream::connect(addr2).await.unwrap();
        let err = send_file(&socket, &short).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
