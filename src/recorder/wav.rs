//! Our own 16-bit PCM WAV writer: the header is rewritten periodically so a
//! crash leaves a playable file, and past a size threshold the file becomes
//! RF64 (a JUNK chunk reserved at the start turns into 'ds64'). Samples that
//! cannot be written (disk full) are skipped, not the file: the write position
//! keeps following the time line, so what follows lands at its right place and
//! the skipped span reads as silence (a hole in the file, which takes no space).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Byte offset where the sample data starts.
pub const DATA_OFFSET: u64 = 80;
const JUNK_PAYLOAD: u32 = 28;
/// Buffered sample bytes that trigger a write: half a second of stereo 8 kHz.
/// Every running call keeps this buffer, so it stays small; the writes it
/// saves beyond this size are few against the packets a call costs.
const FLUSH_AT: usize = 16 * 1024;

/// Sample frames `[from, to)` that could not be written.
#[derive(Debug)]
pub struct WriteLoss {
    /// First frame missing.
    pub from: u64,
    /// Frame after the last one missing.
    pub to: u64,
    /// Why.
    pub source: io::Error,
}

/// A WAV file being written.
pub struct WavWriter {
    path: PathBuf,
    file: File,
    channels: u16,
    sample_rate: u32,
    data_bytes: u64,
    buf: Vec<u8>,
    rf64_threshold: u64,
    rf64: bool,
    header_interval: Duration,
    last_header: Instant,
}

impl WavWriter {
    /// Creates the file and writes a provisional header.
    pub fn create(
        path: &Path,
        channels: u16,
        sample_rate: u32,
        rf64_threshold: u64,
        header_interval: Duration,
    ) -> io::Result<WavWriter> {
        let file = File::create(path)?;
        let mut w = WavWriter {
            path: path.to_path_buf(),
            file,
            channels,
            sample_rate,
            data_bytes: 0,
            // Room for one commit chunk beyond the flush mark, so it rarely grows.
            buf: Vec::with_capacity(FLUSH_AT + 4 * 1024),
            rf64_threshold,
            rf64: false,
            header_interval,
            last_header: Instant::now(),
        };
        w.write_header()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the sample rate; only meaningful before any sample is written.
    pub fn set_sample_rate(&mut self, rate: u32) -> io::Result<()> {
        self.sample_rate = rate;
        self.write_header()
    }

    /// True once the file has switched to RF64.
    pub fn is_rf64(&self) -> bool {
        self.rf64
    }

    /// Sample frames written so far.
    pub fn frames(&self) -> u64 {
        self.data_bytes / (2 * self.channels as u64)
    }

    /// Appends interleaved samples; rewrites the header when the interval is due.
    /// On a failed write the samples that did not reach the file are skipped
    /// (see the module comment) and named in the error; later writes go on.
    pub fn write_samples(&mut self, samples: &[i16]) -> Result<(), WriteLoss> {
        let start = self.buf.len();
        self.buf.resize(start + 2 * samples.len(), 0);
        for (b, s) in self.buf[start..].chunks_exact_mut(2).zip(samples) {
            b.copy_from_slice(&s.to_le_bytes());
        }
        self.appended()
    }

    /// Appends two channels interleaved (left, right, left, …), as
    /// `write_samples` would the interleaved samples; `left` and `right`
    /// have the same length.
    pub fn write_stereo(&mut self, left: &[i16], right: &[i16]) -> Result<(), WriteLoss> {
        debug_assert_eq!(left.len(), right.len());
        let start = self.buf.len();
        self.buf.resize(start + 4 * left.len().min(right.len()), 0);
        for ((b, l), r) in self.buf[start..].chunks_exact_mut(4).zip(left).zip(right) {
            b[..2].copy_from_slice(&l.to_le_bytes());
            b[2..].copy_from_slice(&r.to_le_bytes());
        }
        self.appended()
    }

    /// After samples were buffered: writes when enough are, and the header when due.
    fn appended(&mut self) -> Result<(), WriteLoss> {
        let mut res = Ok(());
        if self.buf.len() >= FLUSH_AT {
            res = self.flush_buf();
        }
        if self.last_header.elapsed() >= self.header_interval {
            if res.is_ok() {
                res = self.flush_buf();
            }
            // Overwrites bytes already on disk; finalize writes it again anyway.
            if let Err(e) = self.write_header() {
                tracing::debug!(file = %self.path.display(), error = %e, "WAV header not updated");
            }
        }
        res
    }

    fn flush_buf(&mut self) -> Result<(), WriteLoss> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let start = DATA_OFFSET + self.data_bytes;
        let mut done = 0;
        let mut failed = None;
        while done < self.buf.len() {
            match self.file.write_at(&self.buf[done..], start + done as u64) {
                Ok(0) => {
                    failed = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let block = 2 * self.channels as u64;
        let from = (self.data_bytes + done as u64) / block;
        self.data_bytes += self.buf.len() as u64;
        self.buf.clear();
        match failed {
            None => Ok(()),
            Some(source) => Err(WriteLoss {
                from,
                to: self.data_bytes / block,
                source,
            }),
        }
    }

    /// Writes everything buffered, a final header, and syncs the file. `Ok`
    /// carries the last samples' loss when they could not be written; `Err`
    /// means the file itself could not be finished.
    pub fn finalize(&mut self) -> io::Result<Option<WriteLoss>> {
        let loss = self.flush_buf().err();
        // A span skipped at the end becomes a hole up to the length the header names.
        self.file.set_len(DATA_OFFSET + self.data_bytes)?;
        self.write_header()?;
        self.file.flush()?;
        self.file.sync_all()?;
        Ok(loss)
    }

    fn write_header(&mut self) -> io::Result<()> {
        self.last_header = Instant::now();
        let riff_size = DATA_OFFSET - 8 + self.data_bytes;
        if riff_size > self.rf64_threshold || riff_size > u32::MAX as u64 {
            self.rf64 = true;
        }
        let mut h = Vec::with_capacity(DATA_OFFSET as usize);
        let block_align = self.channels * 2;
        if self.rf64 {
            h.extend_from_slice(b"RF64");
            h.extend_from_slice(&u32::MAX.to_le_bytes());
            h.extend_from_slice(b"WAVE");
            h.extend_from_slice(b"ds64");
            h.extend_from_slice(&JUNK_PAYLOAD.to_le_bytes());
            h.extend_from_slice(&riff_size.to_le_bytes());
            h.extend_from_slice(&self.data_bytes.to_le_bytes());
            h.extend_from_slice(&self.frames().to_le_bytes());
            h.extend_from_slice(&0u32.to_le_bytes()); // table length
        } else {
            h.extend_from_slice(b"RIFF");
            h.extend_from_slice(&(riff_size as u32).to_le_bytes());
            h.extend_from_slice(b"WAVE");
            h.extend_from_slice(b"JUNK");
            h.extend_from_slice(&JUNK_PAYLOAD.to_le_bytes());
            h.extend_from_slice(&[0u8; JUNK_PAYLOAD as usize]);
        }
        h.extend_from_slice(b"fmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes()); // PCM
        h.extend_from_slice(&self.channels.to_le_bytes());
        h.extend_from_slice(&self.sample_rate.to_le_bytes());
        h.extend_from_slice(&(self.sample_rate * block_align as u32).to_le_bytes());
        h.extend_from_slice(&block_align.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        let data_size = if self.rf64 {
            u32::MAX
        } else {
            self.data_bytes as u32
        };
        h.extend_from_slice(&data_size.to_le_bytes());
        debug_assert_eq!(h.len() as u64, DATA_OFFSET);
        self.file.write_all_at(&h, 0)
    }
}

/// What [`repair`] found in a WAV file left behind by a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    /// Channels in the file.
    pub channels: u16,
    /// Sample rate of the file.
    pub sample_rate: u32,
    /// Whole sample frames on disk, now declared in the header.
    pub frames: u64,
    /// Whether the header is RF64.
    pub rf64: bool,
}

/// Makes a WAV file this writer left unfinished (the process died) valid:
/// cuts a torn last frame off and writes a header whose sizes match the
/// samples on disk. The format (channels, rate) is taken from the file's own
/// header, which the writer wrote as soon as the rate was known.
pub fn repair(path: &Path, rf64_threshold: u64) -> io::Result<Repaired> {
    let file = File::options().read(true).write(true).open(path)?;
    let mut h = [0u8; DATA_OFFSET as usize];
    let len = file.metadata()?.len();
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    if len < DATA_OFFSET {
        return Err(bad("shorter than a WAV header"));
    }
    file.read_exact_at(&mut h, 0)?;
    let was_rf64 = &h[0..4] == b"RF64";
    if !(was_rf64 || &h[0..4] == b"RIFF") || &h[8..12] != b"WAVE" || &h[48..52] != b"fmt " {
        return Err(bad("not a WAV file written by callrec"));
    }
    let channels = u16::from_le_bytes([h[58], h[59]]);
    let sample_rate = u32::from_le_bytes([h[60], h[61], h[62], h[63]]);
    if channels == 0 || sample_rate == 0 {
        return Err(bad("the header names no channels or no sample rate"));
    }
    let block = 2 * channels as u64;
    let data_bytes = (len - DATA_OFFSET) / block * block;
    file.set_len(DATA_OFFSET + data_bytes)?;
    let mut w = WavWriter {
        path: path.to_path_buf(),
        file,
        channels,
        sample_rate,
        data_bytes,
        buf: Vec::new(),
        rf64_threshold,
        rf64: was_rf64,
        header_interval: Duration::MAX,
        last_header: Instant::now(),
    };
    w.finalize()?;
    Ok(Repaired {
        channels,
        sample_rate,
        frames: w.frames(),
        rf64: w.rf64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn riff_file_reads_back_with_hound() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("a.wav");
        let mut w = WavWriter::create(&path, 2, 8000, u64::MAX, Duration::from_secs(3600)).unwrap();
        w.set_sample_rate(16000).unwrap();
        let samples: Vec<i16> = (0..2000).map(|i| (i * 7 - 3000) as i16).collect();
        w.write_samples(&samples).unwrap();
        w.finalize().unwrap();
        let mut r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.spec().channels, 2);
        assert_eq!(r.spec().sample_rate, 16000);
        let back: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(back, samples);
    }

    #[test]
    fn stereo_writes_read_back_as_their_own_channels() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.wav");
        let mut w = WavWriter::create(&path, 2, 8000, u64::MAX, Duration::from_secs(3600)).unwrap();
        let left: Vec<i16> = (0..20_000).map(|i| (i * 3 - 30_000) as i16).collect();
        let right: Vec<i16> = (0..20_000).map(|i| (20_000 - i * 5) as i16).collect();
        // In pieces of odd sizes, across several buffer flushes.
        for (l, r) in left.chunks(777).zip(right.chunks(777)) {
            w.write_stereo(l, r).unwrap();
        }
        w.finalize().unwrap();
        let mut r = hound::WavReader::open(&path).unwrap();
        let back: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
        let (bl, br): (Vec<i16>, Vec<i16>) = back.chunks(2).map(|f| (f[0], f[1])).unzip();
        assert_eq!(bl, left);
        assert_eq!(br, right);
    }

    #[test]
    fn header_is_current_after_interval_without_finalize() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("b.wav");
        let mut w = WavWriter::create(&path, 1, 8000, u64::MAX, Duration::ZERO).unwrap();
        w.write_samples(&[1, 2, 3, 4]).unwrap();
        // No finalize: simulate a crash by reading the file as it is now.
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.len(), 4);
        drop(w);
    }

    #[test]
    fn switches_to_rf64_past_threshold() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("c.wav");
        let mut w = WavWriter::create(&path, 1, 8000, 1000, Duration::from_secs(3600)).unwrap();
        let samples: Vec<i16> = (0..1500).map(|i| i as i16).collect();
        w.write_samples(&samples[..100]).unwrap();
        w.finalize().unwrap();
        assert!(!w.is_rf64());
        w.write_samples(&samples[100..]).unwrap();
        w.finalize().unwrap();
        assert!(w.is_rf64());
        let b = std::fs::read(&path).unwrap();
        // Own minimal RF64 reader.
        assert_eq!(&b[0..4], b"RF64");
        assert_eq!(u32_at(&b, 4), u32::MAX);
        assert_eq!(&b[8..12], b"WAVE");
        assert_eq!(&b[12..16], b"ds64");
        assert_eq!(u32_at(&b, 16), 28);
        let riff_size = u64_at(&b, 20);
        let data_size = u64_at(&b, 28);
        let frames = u64_at(&b, 36);
        assert_eq!(riff_size, b.len() as u64 - 8);
        assert_eq!(data_size, 3000);
        assert_eq!(frames, 1500);
        assert_eq!(&b[48..52], b"fmt ");
        assert_eq!(u32_at(&b, 56), 1 | (1 << 16)); // PCM, mono
        assert_eq!(u32_at(&b, 60), 8000);
        assert_eq!(&b[72..76], b"data");
        assert_eq!(u32_at(&b, 76), u32::MAX);
        let data = &b[80..80 + data_size as usize];
        let back: Vec<i16> = data
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(back, samples);
    }

    #[test]
    fn repair_declares_the_whole_frames_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("r.wav");
        let mut w = WavWriter::create(&path, 2, 8000, u64::MAX, Duration::from_secs(3600)).unwrap();
        w.set_sample_rate(16000).unwrap();
        let samples: Vec<i16> = (0..40_000).map(|i| (i % 1000) as i16).collect();
        // Past the writer's buffer, so part of it reaches the file; no finalize (a crash).
        w.write_samples(&samples).unwrap();
        std::mem::forget(w);
        // A torn last frame: three stray bytes.
        let mut f = File::options().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        assert!(hound::WavReader::open(&path).map(|r| r.len()).unwrap_or(0) < 30_000);
        let r = repair(&path, u64::MAX).unwrap();
        assert_eq!((r.channels, r.sample_rate, r.rf64), (2, 16000, false));
        let on_disk = (std::fs::metadata(&path).unwrap().len() - DATA_OFFSET) / 4;
        assert_eq!(r.frames, on_disk);
        assert!(r.frames >= 8192, "{r:?}");
        let mut rd = hound::WavReader::open(&path).unwrap();
        assert_eq!(rd.spec().sample_rate, 16000);
        let back: Vec<i16> = rd.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(back.len() as u64, r.frames * 2);
        assert_eq!(&back[..], &samples[..back.len()]);
        assert!(repair(&dir.join("missing.wav"), u64::MAX).is_err());
        std::fs::write(dir.join("junk.wav"), vec![7u8; 200]).unwrap();
        assert!(repair(&dir.join("junk.wav"), u64::MAX).is_err());
    }
}
