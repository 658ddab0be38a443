//! A probe for the fake-booted test tier (`store/tests/fakeboot.rs`), run inside a chroot
//! where a deployment looks booted. Opens the sysroot "/" for OS `fakeos`.
//!
//! `aktualizr-rs-store-probe status`: one line per deployment, `COMMIT ROLE,ROLE`.
//! `aktualizr-rs-store-probe current`: the commit of the current deployment.
//! `aktualizr-rs-store-probe stage COMMIT`: deploys COMMIT with staging on.

use aktualizr_rs_store::{Commit, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store = Store::open("/".as_ref(), Some("fakeos"))?.with_staging(true);
    match args.first().map(String::as_str) {
        Some("status") => {
            for d in store.deployments()? {
                println!("{} {}", d.commit, d.roles.join(","));
            }
        }
        Some("current") => {
            let current = store.current()?.ok_or("no deployment")?;
            println!("{}", current.commit);
        }
        Some("stage") => {
            let commit: Commit = args.get(1).ok_or("stage COMMIT")?.parse()?;
            assert!(store.is_booted(), "the sysroot does not look booted");
            store.deploy(&commit, Some("fakeos-staged"))?;
        }
        _ => return Err("usage: aktualizr-rs-store-probe status|current|stage COMMIT".into()),
    }
    Ok(())
}
