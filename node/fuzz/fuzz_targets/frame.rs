//! Replication frames: any bytes, read as a stream of frames, give frames, "need more bytes" or an error,
//! never a panic; every frame decoded encodes again and decodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use node::wire::{check, encode, parse, FrameError, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let checked = check(&buf);
        match parse(&mut buf) {
            Ok(Some(env)) => {
                assert_eq!(checked, Ok(Some(before - buf.len())));
                let mut again = BytesMut::new();
                encode(&env, &mut again);
                assert_eq!(parse(&mut again), Ok(Some(env)));
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(checked, Ok(None));
                assert_eq!(buf.len(), before);
                break;
            }
            Err(FrameError::TooLarge { len }) => {
                assert!(len > MAX_FRAME);
                assert_eq!(buf.len(), before, "an oversize frame is refused before it is taken");
                break;
            }
            Err(_) => break,
        }
    }
});
