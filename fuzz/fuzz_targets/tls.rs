#![no_main]
libfuzzer_sys::fuzz_target!(
    init: {
        // `PeerTls::load` catches the panics of pingora's certificate parser
        // by design, and libfuzzer-sys's hook would abort on them: back to
        // the default hook. A panic that escapes still aborts.
        drop(std::panic::take_hook());
    },
    |data: &[u8]| roster_fuzz::tls::run(data)
);
