//! `sluice compile -f PATH`.

use std::io::Write;
use std::path::Path;

/// Prints the table (stdout, its secrets redacted) and warnings (stderr); returns the exit status: 0 when the
/// manifests compile without errors, 1 otherwise.
pub fn run(path: &Path) -> u8 {
    let snapshot = match sluice_controller::source::read(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let (table, diags) = sluice_api::compile(&snapshot.objects);
    eprint!("{diags}");
    if diags.has_errors() {
        return 1;
    }
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut stdout, &table.redacted())
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(stdout));
    match written {
        Ok(()) => 0,
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
