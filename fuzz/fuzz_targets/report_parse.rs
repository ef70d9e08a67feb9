//! Reports are uploaded by hosts over SFTP and read by `bento status` and the dashboard:
//! any bytes must parse to a report or to a typed error, never a panic. A report that
//! parses survives its own file format (its log cut to the cap, nothing else changed), and
//! its file name is one the SFTP server takes under `/reports/`.
#![no_main]

use bento::report::{self, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = Report::parse(data) else {
        return;
    };
    let again = Report::parse(&r.to_bytes()).expect("own file format parses");
    let log = report::cut_log(&r.log, report::MAX_LOG_BYTES);
    assert_eq!(again, Report { log, ..r.clone() });
    let name = r.file_name();
    assert!(
        !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "{name:?}"
    );
});
