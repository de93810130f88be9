//! Writing certificate material to disk: private keys readable by the owner
//! only, everything else world-readable.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::CertsError;

/// Whether a file holds secret material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Secrecy {
    /// Certificates, public keys, CRLs: mode 0644.
    Public,
    /// Private keys: mode 0600 from the moment the file exists.
    Private,
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Write { path: dir.to_owned(), source })
}

/// Writes `contents` to `path`, replacing it. A private file is created with
/// mode 0600 (never briefly readable by others) and reset to 0600 if it
/// already existed with a wider mode.
pub(crate) fn write_file(path: &Path, contents: &[u8], secrecy: Secrecy) -> Result<(), CertsError> {
    let err = |source| CertsError::Write { path: path.to_owned(), source };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mode = match secrecy {
            Secrecy::Public => 0o644,
            Secrecy::Private => 0o600,
        };
        options.mode(mode);
        let mut file = options.open(path).map_err(err)?;
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(err)?;
        file.write_all(contents).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    #[cfg(not(unix))]
    {
        let _ = secrecy;
        let mut file = options.open(path).map_err(err)?;
        file.write_all(contents).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    Ok(())
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Read { path: path.to_owned(), source })
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn private_files_are_owner_only_even_when_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        write_file(&path, b"secret", Secrecy::Private).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
    }
}
