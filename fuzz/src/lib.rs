//! Helpers shared by the fuzz targets.

/// Splits `data` into a chunk size and the payload to cut into chunks of
/// it. Streaming parsers must give the same result however the bytes are
/// cut, so targets feed the payload whole and chunked and compare: byte 0
/// is the chunk size (0: one chunk).
pub fn chunked(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&size, payload) = data.split_first()?;
    let size = if size == 0 {
        payload.len().max(1)
    } else {
        usize::from(size)
    };
    Some((size, payload))
}
