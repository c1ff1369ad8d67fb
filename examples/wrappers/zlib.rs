//! A small safe streaming compressor and decompressor over the real zlib,
//! with ffi-check as its debug-mode safety layer.
//!
//! Shared by `examples/zlib.rs`, `tests/zlib.rs` and the property tests.
//!
//! What zlib keeps, and how the wrapper keeps the rules:
//!
//! - zlib's state (allocated by `deflateInit_` / `inflateInit_` through the
//!   stream's `zalloc`) keeps `state->strm`, a pointer back to the
//!   `z_stream`, until `deflateEnd` / `inflateEnd`. The stream is Rust
//!   memory, so it must not move or be freed in between: it lives in a
//!   [`Pinned`]. The wrapper declares what zlib keeps ([`ffi_check::retain`]
//!   after init, [`ffi_check::release`] after end), which mode 1 cannot see
//!   inside zlib by itself (rule P2).
//! - Between calls the stream keeps `next_in` / `next_out`, pointers into
//!   the buffers zlib reads and writes. Every call lends zlib the stream, so
//!   those buffers must be pinned (rule P1): the wrapper's own windows are
//!   [`Pinned`], and a caller's buffer lent with `write_lent` must be pinned
//!   by the caller for the call.
//! - zlib's memory goes through [`ffi_check::hooks::zalloc`] /
//!   [`ffi_check::hooks::zfree`]: tracked C memory, attributed to the line
//!   that created the stream, so a stream never ended is a leak with that
//!   line (rule C3).
//!
//! Every FFI call goes through [`ffi_check::call!`]. The public methods are
//! `#[track_caller]`, so reports name the caller's line, not the wrapper's.

#![allow(dead_code)]

use std::fmt;
use std::os::raw::{c_char, c_int};

use ffi_check::{call, hooks, to_c, Managed, Pinned};
use libz_sys as z;

/// The size of the wrapper's input and output windows.
pub const WINDOW: usize = 16 * 1024;

/// When zlib should push out what it has buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// `Z_NO_FLUSH`: zlib decides.
    None,
    /// `Z_SYNC_FLUSH`: everything so far, byte-aligned.
    Sync,
    /// `Z_FULL_FLUSH`: as `Sync`, and the history is reset.
    Full,
    /// `Z_FINISH`: the end of the stream.
    Finish,
}

impl Flush {
    fn code(self) -> c_int {
        match self {
            Flush::None => z::Z_NO_FLUSH,
            Flush::Sync => z::Z_SYNC_FLUSH,
            Flush::Full => z::Z_FULL_FLUSH,
            Flush::Finish => z::Z_FINISH,
        }
    }
}

/// A zlib error code and zlib's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZlibError {
    /// zlib's return code (`Z_DATA_ERROR`, ...).
    pub code: c_int,
    /// zlib's message, or the wrapper's when zlib gave none.
    pub message: String,
}

impl fmt::Display for ZlibError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zlib error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for ZlibError {}

/// A `z_stream` whose allocator is ffi-check's hooks.
pub fn new_stream() -> z::z_stream {
    z::z_stream {
        next_in: std::ptr::null_mut(),
        avail_in: 0,
        total_in: 0,
        next_out: std::ptr::null_mut(),
        avail_out: 0,
        total_out: 0,
        msg: std::ptr::null_mut(),
        state: std::ptr::null_mut(),
        zalloc: hooks::zalloc,
        zfree: hooks::zfree,
        opaque: std::ptr::null_mut(),
        data_type: 0,
        adler: 0,
        reserved: 0,
    }
}

/// zlib's version string, as the init functions check it.
pub fn version() -> *const c_char {
    // SAFETY: zlibVersion returns a static string and has no preconditions.
    unsafe { z::zlibVersion() }
}

/// `sizeof(z_stream)`, as the init functions check it.
pub fn stream_size() -> c_int {
    to_c(std::mem::size_of::<z::z_stream>())
}

fn error(stream: &z::z_stream, code: c_int) -> ZlibError {
    let message = if stream.msg.is_null() {
        format!("zlib returned {code}")
    } else {
        // SAFETY: zlib's messages are static NUL-terminated strings.
        unsafe { ffi_check::string_from_c(stream.msg) }
    };
    ZlibError { code, message }
}

/// One zlib stream and its windows: what `Deflater` and `Inflater` share.
struct Stream {
    /// zlib's state points back here until the end: pinned.
    z: Pinned<z::z_stream>,
    /// What zlib reads: `next_in` points here between calls.
    input: Pinned<[u8]>,
    /// What zlib writes: `next_out` points here between calls.
    output: Pinned<[u8]>,
    /// Set once the stream was ended (its zlib state freed).
    ended: bool,
    /// Set once zlib said `Z_STREAM_END`.
    finished: bool,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            z: Pinned::new(new_stream()),
            input: Pinned::from_vec(vec![0u8; WINDOW]),
            output: Pinned::from_vec(vec![0u8; WINDOW]),
            ended: false,
            finished: false,
        }
    }

    /// After a successful init: zlib now keeps a pointer to the stream.
    #[track_caller]
    fn started(&mut self) {
        ffi_check::retain(self.z.as_ptr());
    }

    /// Copies the next piece of `rest` into the input window once zlib has
    /// read all of the last one.
    fn refill<'a>(&mut self, rest: &'a [u8]) -> &'a [u8] {
        if self.z.avail_in != 0 || rest.is_empty() {
            return rest;
        }
        let n = rest.len().min(WINDOW);
        self.input[..n].copy_from_slice(&rest[..n]);
        self.z.next_in = self.input.as_mut_ptr();
        self.z.avail_in = to_c(n);
        &rest[n..]
    }

    /// Points `next_out` at the whole output window.
    fn open_output(&mut self) {
        self.z.next_out = self.output.as_mut_ptr();
        self.z.avail_out = to_c(WINDOW);
    }

    /// Appends what zlib wrote into the output window; returns how much.
    fn drain(&mut self, out: &mut Vec<u8>) -> usize {
        let produced = WINDOW - self.z.avail_out as usize;
        out.extend_from_slice(&self.output[..produced]);
        produced
    }
}

/// A streaming compressor (zlib format).
///
/// ```ignore
/// let mut d = Deflater::new(6)?;
/// let mut out = Vec::new();
/// d.write(b"hello ", Flush::None, &mut out)?;
/// d.write(b"world", Flush::Sync, &mut out)?;
/// d.finish(&mut out)?;
/// ```
pub struct Deflater {
    s: Stream,
}

impl Deflater {
    /// `deflateInit` at `level` (0–9, or -1 for zlib's default).
    #[track_caller]
    pub fn new(level: c_int) -> Result<Deflater, ZlibError> {
        let mut s = Stream::new();
        // SAFETY: a fresh stream with our allocator, zlib's own version
        // string and struct size.
        let rc = unsafe { call!(z::deflateInit_(&mut s.z, level, version(), stream_size())) };
        if rc != z::Z_OK {
            s.ended = true;
            return Err(error(&s.z, rc));
        }
        s.started();
        Ok(Deflater { s })
    }

    /// Compresses `data`, then flushes as `flush` says; appends the output.
    /// After `Flush::Finish` the stream is finished.
    #[track_caller]
    pub fn write(&mut self, data: &[u8], flush: Flush, out: &mut Vec<u8>) -> Result<(), ZlibError> {
        self.check_open()?;
        let mut rest = data;
        loop {
            rest = self.s.refill(rest);
            let last = rest.is_empty();
            let full = self.step(if last { flush } else { Flush::None }, out)?;
            if self.s.finished
                || (last && self.s.z.avail_in == 0 && !full && flush != Flush::Finish)
            {
                return Ok(());
            }
        }
    }

    /// Compresses `data` in place, without copying it into the window: zlib
    /// reads it through the stream's `next_in` during the calls this method
    /// makes.
    ///
    /// Because zlib reaches `data` through the stream it is lent, `data`
    /// must be pinned for the call (rule P1; pin it with a
    /// [`ffi_check::Pinner`]). The stream forgets `data` before returning.
    #[track_caller]
    pub fn write_lent(
        &mut self,
        data: &Managed<[u8]>,
        flush: Flush,
        out: &mut Vec<u8>,
    ) -> Result<(), ZlibError> {
        self.check_open()?;
        if self.s.z.avail_in != 0 {
            // Whatever the window still holds goes first.
            self.write(&[], Flush::None, out)?;
        }
        self.s.z.next_in = data.as_ptr().cast_mut();
        self.s.z.avail_in = to_c(data.len());
        let result = loop {
            let full = match self.step(flush, out) {
                Ok(full) => full,
                Err(e) => break Err(e),
            };
            if self.s.finished || (self.s.z.avail_in == 0 && !full && flush != Flush::Finish) {
                break Ok(());
            }
        };
        // `data` may die after this call: the stream must not point to it.
        self.s.z.next_in = std::ptr::null_mut();
        self.s.z.avail_in = 0;
        result
    }

    /// Finishes the stream (`Z_FINISH`) and ends it (`deflateEnd`).
    #[track_caller]
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), ZlibError> {
        if !self.s.finished {
            self.write(&[], Flush::Finish, out)?;
        }
        self.end();
        Ok(())
    }

    fn check_open(&self) -> Result<(), ZlibError> {
        if self.s.finished {
            return Err(ZlibError {
                code: z::Z_STREAM_ERROR,
                message: "write after finish".into(),
            });
        }
        Ok(())
    }

    /// One `deflate` call into a fresh output window; true when zlib filled
    /// it (and may have more).
    #[track_caller]
    fn step(&mut self, flush: Flush, out: &mut Vec<u8>) -> Result<bool, ZlibError> {
        self.s.open_output();
        // SAFETY: the stream was initialised and not ended; next_in and
        // next_out point to avail_in / avail_out live bytes.
        let rc = unsafe { call!(z::deflate(&mut self.s.z, flush.code())) };
        self.s.drain(out);
        match rc {
            z::Z_OK | z::Z_BUF_ERROR => Ok(self.s.z.avail_out == 0),
            z::Z_STREAM_END => {
                self.s.finished = true;
                Ok(false)
            }
            _ => Err(error(&self.s.z, rc)),
        }
    }

    fn end(&mut self) {
        if self.s.ended {
            return;
        }
        // SAFETY: initialised, not yet ended.
        unsafe { call!(z::deflateEnd(&mut self.s.z)) };
        ffi_check::release(self.s.z.as_ptr());
        self.s.ended = true;
    }
}

impl Drop for Deflater {
    fn drop(&mut self) {
        self.end();
    }
}

/// A streaming decompressor (zlib format).
pub struct Inflater {
    s: Stream,
}

impl Inflater {
    /// `inflateInit`.
    #[track_caller]
    pub fn new() -> Result<Inflater, ZlibError> {
        let mut s = Stream::new();
        // SAFETY: a fresh stream with our allocator, zlib's own version
        // string and struct size.
        let rc = unsafe { call!(z::inflateInit_(&mut s.z, version(), stream_size())) };
        if rc != z::Z_OK {
            s.ended = true;
            return Err(error(&s.z, rc));
        }
        s.started();
        Ok(Inflater { s })
    }

    /// Decompresses `data`, appending the output. Returns true once the
    /// end of the compressed stream was reached (bytes after it are
    /// ignored).
    #[track_caller]
    pub fn write(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<bool, ZlibError> {
        let mut rest = data;
        while !self.s.finished {
            rest = self.s.refill(rest);
            let before = self.s.z.avail_in;
            self.s.open_output();
            // SAFETY: initialised, not ended; next_in / next_out point to
            // avail_in / avail_out live bytes.
            let rc = unsafe { call!(z::inflate(&mut self.s.z, z::Z_NO_FLUSH)) };
            let produced = self.s.drain(out);
            let full = self.s.z.avail_out == 0;
            match rc {
                z::Z_STREAM_END => self.s.finished = true,
                z::Z_OK => {}
                z::Z_BUF_ERROR if produced == 0 && self.s.z.avail_in == before => {
                    if rest.is_empty() && !full {
                        break;
                    }
                    return Err(error(&self.s.z, rc));
                }
                z::Z_BUF_ERROR => {}
                z::Z_NEED_DICT => return Err(error(&self.s.z, z::Z_DATA_ERROR)),
                _ => return Err(error(&self.s.z, rc)),
            }
            if self.s.z.avail_in == 0 && rest.is_empty() && !full {
                break;
            }
        }
        Ok(self.s.finished)
    }

    /// True once the end of the compressed stream was reached.
    pub fn is_finished(&self) -> bool {
        self.s.finished
    }

    /// Ends the stream (`inflateEnd`); an unfinished stream is an error.
    #[track_caller]
    pub fn finish(mut self) -> Result<(), ZlibError> {
        let finished = self.s.finished;
        self.end();
        if finished {
            Ok(())
        } else {
            Err(ZlibError {
                code: z::Z_BUF_ERROR,
                message: "compressed stream ended early".into(),
            })
        }
    }

    fn end(&mut self) {
        if self.s.ended {
            return;
        }
        // SAFETY: initialised, not yet ended.
        unsafe { call!(z::inflateEnd(&mut self.s.z)) };
        ffi_check::release(self.s.z.as_ptr());
        self.s.ended = true;
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        self.end();
    }
}

/// Compresses `data` in one go.
#[track_caller]
pub fn compress(data: &[u8], level: c_int) -> Result<Vec<u8>, ZlibError> {
    let mut d = Deflater::new(level)?;
    let mut out = Vec::new();
    d.write(data, Flush::Finish, &mut out)?;
    d.finish(&mut out)?;
    Ok(out)
}

/// Decompresses a whole zlib stream.
#[track_caller]
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, ZlibError> {
    let mut i = Inflater::new()?;
    let mut out = Vec::new();
    i.write(data, &mut out)?;
    i.finish()?;
    Ok(out)
}
