//! A [`std::io::Write`] that hands what is written, in chunks, to an async
//! task over a channel: how an archive written on a blocking thread (a
//! host tree packed, a workspace listed) reaches a stream of frames. A
//! closed channel (the reader gave up) surfaces as `BrokenPipe`.

use tokio::sync::mpsc;

pub struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChunkWriter {
    /// Sends chunks of about `chunk` bytes (at most one frame's worth
    /// keeps each send a frame).
    pub fn new(tx: mpsc::Sender<Vec<u8>>, chunk: usize) -> ChunkWriter {
        ChunkWriter {
            tx,
            buf: Vec::new(),
            chunk,
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.chunk {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writes_arrive_in_chunks_and_a_gone_reader_is_a_broken_pipe() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut w = ChunkWriter::new(tx, 4);
        w.write_all(b"abcdef").unwrap();
        w.write_all(b"g").unwrap();
        w.flush().unwrap();
        assert_eq!(rx.blocking_recv().unwrap(), b"abcdef");
        assert_eq!(rx.blocking_recv().unwrap(), b"g");
        drop(rx);
        w.write_all(b"x").unwrap();
        assert_eq!(
            w.flush().unwrap_err().kind(),
            std::io::ErrorKind::BrokenPipe
        );
    }
}
