//! Hand-made PNG pieces for tests that need PNGs no encoder writes (palette, low bit depths,
//! hostile headers): CRC-32, chunks, zlib streams of stored blocks. Test code of the frame
//! decoder's unit tests, shared with `tests/fuzz_frames.rs` (through `#[path]`); std only.

/// CRC-32 (IEEE) as PNG chunks use it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Append a chunk: length, type, data, CRC.
pub fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// zlib stream of stored (uncompressed) deflate blocks.
pub fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(65535).collect() };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A PNG from raw parts: IHDR (width, height, bit depth, colour type, interlace), `extra` chunks,
/// one IDAT holding `idat` (already a zlib stream), IEND.
pub fn png_chunks(
    w: u32,
    h: u32,
    depth: u8,
    colour: u8,
    interlace: u8,
    extra: &[(&[u8; 4], Vec<u8>)],
    idat: &[u8],
) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, interlace]);
    chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        chunk(&mut out, kind, data);
    }
    chunk(&mut out, b"IDAT", idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A non-interlaced PNG whose scanlines are `rows` (unfiltered; a 0 filter byte is prepended).
pub fn raw_png(w: u32, h: u32, depth: u8, colour: u8, extra: &[(&[u8; 4], Vec<u8>)], rows: &[Vec<u8>]) -> Vec<u8> {
    let mut data = Vec::new();
    for row in rows {
        data.push(0);
        data.extend_from_slice(row);
    }
    png_chunks(w, h, depth, colour, 0, extra, &zlib_stored(&data))
}

/// Pack `values` (each < 2^depth) into bytes, most significant bits first.
pub fn pack_bits(values: &[u8], depth: u8) -> Vec<u8> {
    let per = (8 / depth) as usize;
    values
        .chunks(per)
        .map(|c| c.iter().enumerate().fold(0u8, |acc, (i, &v)| acc | (v << (8 - depth as usize * (i + 1)))))
        .collect()
}
