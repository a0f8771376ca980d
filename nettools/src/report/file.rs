//! Writing report files (`--out`, `--folded`, `--hgrm`) as root without being turned against the
//! node. A report is written to a temporary file created next to its name (`O_EXCL`,
//! `O_NOFOLLOW`, mode 0644 less the umask) and renamed over the name once complete: a symbolic
//! link planted at the name is replaced, never followed; a run that fails leaves the old file
//! as it was; nothing is truncated before the trace has produced its report.
//!
//! Names are looked up relative to their directory, held open, and nettools replaces only
//! what belongs to the caller (or root): a link or file of another user is refused, as is a
//! `--hgrm` directory others can write to unless it is sticky like /tmp. A link of the
//! caller's or root's (`/dev/stdout`), a pipe or a terminal is written through as it is.

use std::{
    ffi::{CString, OsStr, OsString},
    fs::File,
    io::{self, Seek as _, Write},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Result, anyhow, bail};

/// The effective user nettools writes as.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn c_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| anyhow!("{name:?} contains a NUL byte"))
}

fn c_path(path: &Path) -> Result<CString> {
    c_name(path.as_os_str())
}

/// A file's type and owner, as `lstat` or `fstat` saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub uid: u32,
    pub mode: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A character device (a terminal, /dev/null) or a pipe.
    Stream,
    /// A block device or a socket.
    Other,
}

impl Entry {
    fn from_stat(st: &libc::stat) -> Self {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR | libc::S_IFIFO => Kind::Stream,
            _ => Kind::Other,
        };
        Self {
            kind,
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
        }
    }

    /// Whether the caller (or root) owns it: what nettools may replace or follow.
    pub fn ours(&self, euid: u32) -> bool {
        self.uid == euid || self.uid == 0
    }

    /// Whether someone besides the caller (and root) can change what a directory holds.
    pub fn writable_by_others(&self, euid: u32) -> bool {
        self.mode & 0o022 != 0 || !self.ours(euid)
    }

    pub fn sticky(&self) -> bool {
        self.mode & 0o1000 != 0
    }
}

/// The sentence refusing to replace or follow `path` (`None`: nettools may write it).
pub fn refusal(path: &Path, entry: Entry, dir: Entry, euid: u32) -> Option<String> {
    let shown = path.display();
    match entry.kind {
        Kind::Dir => Some(format!("{shown} is a directory")),
        Kind::Other => Some(format!(
            "{shown} is not a regular file, a pipe or a terminal"
        )),
        Kind::Symlink if !entry.ours(euid) => Some(format!(
            "{shown} is a symbolic link of uid {}: nettools does not write through another \
             user's links (remove it or choose another name)",
            entry.uid
        )),
        Kind::Symlink if dir.writable_by_others(euid) && !dir.sticky() => Some(format!(
            "{shown} is a symbolic link in a directory others can write to: nettools does not \
             follow it"
        )),
        _ if !entry.ours(euid) => Some(format!(
            "{shown} belongs to uid {}: nettools replaces only files of its own user (remove \
             it or choose another name)",
            entry.uid
        )),
        _ => None,
    }
}

/// A directory nettools writes into, held open: names are resolved relative to it, so a
/// directory renamed or replaced meanwhile does not redirect the writes.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    entry: Entry,
}

impl Dir {
    /// The directory as named. Its last component may be a symbolic link only when it belongs
    /// to the caller or root.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path;
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let c = c_path(path)?;
        let open = |follow: bool| -> io::Result<OwnedFd> {
            let flags = libc::O_RDONLY
                | libc::O_DIRECTORY
                | libc::O_CLOEXEC
                | if follow { 0 } else { libc::O_NOFOLLOW };
            // SAFETY: a NUL-terminated path; the returned descriptor is owned below.
            let fd = unsafe { libc::open(c.as_ptr(), flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and nothing else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let fd = match open(false) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                let link =
                    lstat(path)?.ok_or_else(|| anyhow!("{} does not exist", path.display()))?;
                if !link.ours(euid()) {
                    bail!(
                        "{} is a symbolic link of uid {}: nettools does not follow another \
                         user's links",
                        path.display(),
                        link.uid
                    );
                }
                open(true).map_err(|e| dir_error(path, &e))?
            }
            Err(e) => bail!(dir_error(path, &e)),
        };
        let entry = fstat(&fd).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        Ok(Self {
            fd,
            path: shown.to_path_buf(),
            entry,
        })
    }

    /// A directory for nettools' own files (`--hgrm DIR`), created when missing. Refused when
    /// someone else can write to it, unless it is sticky (like /tmp: others cannot replace
    /// what is not theirs there).
    pub fn for_own_files(path: &Path) -> Result<Self> {
        if lstat(path)?.is_none() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(|e| anyhow!("cannot create {}: {}", path.display(), plain(&e)))?;
        }
        let dir = Self::open(path)?;
        if let Some(why) = shared_refusal(path, dir.entry, euid()) {
            bail!(why);
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is at `name` in this directory now (`None`: nothing).
    fn lookup(&self, name: &OsStr) -> Result<Option<Entry>> {
        let c = c_name(name)?;
        // SAFETY: `st` is written by fstatat, read only when it succeeded.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid directory descriptor, a NUL-terminated name and a stat buffer.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            return Ok(Some(Entry::from_stat(&st)));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            bail!(
                "cannot look at {}: {}",
                self.path.join(name).display(),
                plain(&e)
            )
        }
    }

    /// Fails with one sentence unless nettools may replace `name` (see [`refusal`]); says
    /// whether something is there.
    fn check(&self, name: &OsStr) -> Result<Option<Entry>> {
        let found = self.lookup(name)?;
        if let Some(entry) = found
            && let Some(why) = refusal(&self.path.join(name), entry, self.entry, euid())
        {
            bail!(why);
        }
        Ok(found)
    }

    /// Checks `name` for [`Dir::replace`] before anything is written, so a refusal comes
    /// before the work. A link of the caller's there is replaced by the rename, not followed.
    pub fn check_replace(&self, name: &OsStr) -> Result<()> {
        self.check(name).map(|_| ())
    }

    /// A new temporary file in this directory, removed unless committed.
    fn temp(&self, name: &OsStr) -> Result<Pending> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let target = c_name(name)?;
        for _ in 0..100 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let tmp = CString::new(format!(".nettools-{}-{n}.tmp", std::process::id()))?;
            // SAFETY: a valid directory descriptor and a NUL-terminated name; the result is
            // owned below.
            let fd = unsafe {
                libc::openat(
                    self.fd.as_raw_fd(),
                    tmp.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644 as libc::c_uint,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::AlreadyExists {
                    continue;
                }
                bail!(
                    "cannot create a file in {}: {}",
                    self.path.display(),
                    plain(&e)
                );
            }
            // SAFETY: `fd` was just opened and nothing else owns it.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            return Ok(Pending {
                dir: self
                    .fd
                    .try_clone()
                    .map_err(|e| anyhow!("cannot keep {} open: {e}", self.path.display()))?,
                tmp,
                target,
                shown: self.path.join(name),
                file,
                done: false,
            });
        }
        bail!(
            "cannot create a temporary file in {}: every name tried exists",
            self.path.display()
        )
    }

    /// Writes `bytes` as `name`: a temporary file renamed over the name once complete.
    pub fn replace(&self, name: &OsStr, bytes: &[u8]) -> Result<PathBuf> {
        self.check(name)?;
        let mut pending = self.temp(name)?;
        let shown = pending.shown.clone();
        pending
            .file
            .write_all(bytes)
            .map_err(|e| anyhow!("cannot write {}: {}", shown.display(), plain(&e)))?;
        pending.commit()?;
        Ok(shown)
    }
}

/// Why a directory is refused for nettools' own files (`None`: it is fine).
pub fn shared_refusal(path: &Path, dir: Entry, euid: u32) -> Option<String> {
    (dir.writable_by_others(euid) && !dir.sticky()).then(|| {
        format!(
            "{} can be written by others (mode {:04o}, uid {}): nettools writes its files only \
             where nobody else can replace them; use a directory of your own or a sticky one",
            path.display(),
            dir.mode,
            dir.uid
        )
    })
}

/// A temporary file that becomes its name by [`Pending::commit`], or disappears when dropped.
pub struct Pending {
    dir: OwnedFd,
    tmp: CString,
    target: CString,
    shown: PathBuf,
    file: File,
    done: bool,
}

impl Pending {
    /// Makes the file durable and renames it over its name (atomically: a reader sees the old
    /// file or the new one, never a part).
    pub fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| anyhow!("cannot write {}: {}", self.shown.display(), plain(&e)))?;
        // SAFETY: a valid directory descriptor and NUL-terminated names in it.
        let rc = unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                self.tmp.as_ptr(),
                self.dir.as_raw_fd(),
                self.target.as_ptr(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            bail!("cannot write {}: {}", self.shown.display(), plain(&e));
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: a valid directory descriptor and a NUL-terminated name in it.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.tmp.as_ptr(), 0) };
        }
    }
}

/// Where a report file (`--out FILE`, `--folded FILE`) goes, decided before tracing starts.
pub enum Destination {
    /// A new or regular file: written to a temporary file, renamed over the name when done.
    Replace { dir: Dir, name: OsString },
    /// A pipe, a terminal, /dev/null, or a link of the caller's or root's (`/dev/stdout`):
    /// written through as it is; `follow` for a link.
    Through { path: PathBuf, follow: bool },
}

impl Destination {
    /// Checks `path` (see the module's rules) and says how it will be written.
    pub fn new(path: &Path) -> Result<Self> {
        let Some(name) = path.file_name() else {
            bail!("{} is not a file name", path.display());
        };
        let dir = Dir::open(path.parent().unwrap_or(Path::new(".")))?;
        Ok(match dir.check(name)? {
            None => Self::Replace {
                name: name.to_os_string(),
                dir,
            },
            Some(e) => match e.kind {
                Kind::File => Self::Replace {
                    name: name.to_os_string(),
                    dir,
                },
                kind => Self::Through {
                    path: path.to_path_buf(),
                    follow: kind == Kind::Symlink,
                },
            },
        })
    }

    /// Opens it for writing: a file to write to, and what makes it final ([`Commit`]).
    pub fn open(&self) -> Result<(File, Commit)> {
        match self {
            Self::Replace { dir, name } => {
                let pending = dir.temp(name)?;
                let file = pending.file.try_clone().map_err(|e| {
                    anyhow!("cannot write {}: {}", pending.shown.display(), plain(&e))
                })?;
                Ok((file, Commit(Some(Finish::Rename(pending)))))
            }
            Self::Through { path, follow } => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(
                        libc::O_NOCTTY
                            | libc::O_CLOEXEC
                            | if *follow { 0 } else { libc::O_NOFOLLOW },
                    )
                    .open(path)
                    .map_err(|e| anyhow!("cannot write {}: {}", path.display(), plain(&e)))?;
                let keep = file
                    .try_clone()
                    .map_err(|e| anyhow!("cannot write {}: {}", path.display(), plain(&e)))?;
                Ok((file, Commit(Some(Finish::Truncate(keep)))))
            }
        }
    }

    /// Writes `bytes` as the whole file.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        let (mut file, commit) = self.open()?;
        file.write_all(bytes)
            .map_err(|e| anyhow!("cannot write {}: {}", self.path().display(), plain(&e)))?;
        commit.commit()
    }

    /// The name as given.
    pub fn path(&self) -> PathBuf {
        match self {
            Self::Replace { dir, name } => dir.path.join(name),
            Self::Through { path, .. } => path.clone(),
        }
    }
}

enum Finish {
    Rename(Pending),
    /// A regular file reached through a link is cut where the report ended.
    Truncate(File),
}

/// Makes a report file final once it is complete; dropped unused, the old file stays as it
/// was (a file written through a link or a pipe has been written already).
pub struct Commit(Option<Finish>);

impl Commit {
    /// Nothing to commit: the report goes to stdout.
    pub fn none() -> Self {
        Self(None)
    }

    pub fn commit(mut self) -> Result<()> {
        match self.0.take() {
            Some(Finish::Rename(p)) => p.commit(),
            Some(Finish::Truncate(mut f)) => {
                if f.metadata().is_ok_and(|m| m.is_file())
                    && let Ok(end) = f.stream_position()
                {
                    let _ = f.set_len(end);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn lstat(path: &Path) -> Result<Option<Entry>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt as _;
            let kind = if m.file_type().is_symlink() {
                Kind::Symlink
            } else if m.is_dir() {
                Kind::Dir
            } else if m.is_file() {
                Kind::File
            } else {
                Kind::Other
            };
            Ok(Some(Entry {
                kind,
                uid: m.uid(),
                mode: m.mode() & 0o7777,
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("cannot look at {}: {}", path.display(), plain(&e)),
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<Entry> {
    // SAFETY: `st` is written by fstat, read only when it succeeded.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Entry::from_stat(&st))
}

fn dir_error(path: &Path, e: &io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::ENOTDIR) => anyhow!("{} is not a directory", path.display()),
        Some(libc::ENOENT) => anyhow!("the directory {} does not exist", path.display()),
        _ => anyhow!("cannot open the directory {}: {}", path.display(), plain(e)),
    }
}

/// An I/O error as words, without the raw errno ("permission denied", "no space left on
/// device").
pub fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, uid: u32, mode: u32) -> Entry {
        Entry { kind, uid, mode }
    }

    #[test]
    fn replaces_only_what_belongs_to_the_caller() {
        let path = Path::new("/tmp/hg/web-dns.hgrm");
        let tmp = entry(Kind::Dir, 0, 0o1777);
        let own = entry(Kind::Dir, 0, 0o755);
        let open = entry(Kind::Dir, 0, 0o777);
        // Another user's link or file: refused, wherever it is.
        let why = refusal(path, entry(Kind::Symlink, 1000, 0o777), tmp, 0);
        assert!(why.is_some_and(|w| w.contains("symbolic link of uid 1000")));
        let why = refusal(path, entry(Kind::File, 1000, 0o644), tmp, 0);
        assert!(why.is_some_and(|w| w.contains("belongs to uid 1000")));
        // Root's or the caller's: replaced (files) or written through (links, pipes).
        assert_eq!(refusal(path, entry(Kind::File, 0, 0o644), tmp, 0), None);
        assert_eq!(refusal(path, entry(Kind::Symlink, 0, 0o777), own, 0), None);
        assert_eq!(
            refusal(path, entry(Kind::File, 1000, 0o644), own, 1000),
            None
        );
        assert_eq!(refusal(path, entry(Kind::Stream, 0, 0o666), own, 0), None);
        // A link of root's in a directory anyone can rewrite is not followed.
        assert!(refusal(path, entry(Kind::Symlink, 0, 0o777), open, 0).is_some());
        assert!(refusal(path, entry(Kind::Dir, 0, 0o755), own, 0).is_some());
        assert!(refusal(path, entry(Kind::Other, 0, 0o600), own, 0).is_some());
    }

    #[test]
    fn own_files_only_where_others_cannot_replace_them() {
        let p = Path::new("/x");
        assert_eq!(shared_refusal(p, entry(Kind::Dir, 0, 0o755), 0), None);
        assert_eq!(shared_refusal(p, entry(Kind::Dir, 0, 0o1777), 0), None);
        assert_eq!(shared_refusal(p, entry(Kind::Dir, 1000, 0o700), 1000), None);
        assert!(shared_refusal(p, entry(Kind::Dir, 0, 0o777), 0).is_some());
        assert!(shared_refusal(p, entry(Kind::Dir, 0, 0o775), 0).is_some());
        // Another user's directory: they can replace what nettools writes there.
        let why = shared_refusal(p, entry(Kind::Dir, 1000, 0o755), 0);
        assert!(why.is_some_and(|w| w.contains("mode 0755, uid 1000")));
    }

    /// A directory of this test's own under the system's temporary directory.
    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nettools-file-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    #[test]
    fn a_planted_link_is_replaced_not_followed_and_failures_leave_the_old_file() -> Result<()> {
        let dir = scratch("replace");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious")?;
        let link = dir.join("report.txt");
        std::os::unix::fs::symlink(&victim, &link)?;
        // Our own link (this test's user) in our own directory: written through.
        let d = Destination::new(&link)?;
        assert!(matches!(d, Destination::Through { follow: true, .. }));
        // A regular file: replaced whole, only once committed.
        std::fs::remove_file(&link)?;
        std::fs::write(&link, "old report")?;
        let d = Destination::new(&link)?;
        let (mut f, commit) = d.open()?;
        f.write_all(b"new report")?;
        assert_eq!(std::fs::read_to_string(&link)?, "old report");
        drop(commit); // a failed run
        drop(f);
        assert_eq!(std::fs::read_to_string(&link)?, "old report");
        let (mut f, commit) = d.open()?;
        f.write_all(b"new report")?;
        commit.commit()?;
        assert_eq!(std::fs::read_to_string(&link)?, "new report");
        // No temporary file is left either way.
        let names: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(std::fs::read_to_string(&victim)?, "precious");
        // Dir::replace over a link: the link becomes the file, the victim is untouched.
        std::fs::remove_file(&link)?;
        std::os::unix::fs::symlink(&victim, &link)?;
        Dir::open(&dir)?.replace(OsStr::new("report.txt"), b"x")?;
        assert_eq!(std::fs::read_to_string(&victim)?, "precious");
        assert!(!std::fs::symlink_metadata(&link)?.file_type().is_symlink());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn clear_sentences() {
        let e = Destination::new(Path::new("/nonexistent-dir-nettools/x"));
        assert!(e.is_err_and(
            |e| e.to_string() == "the directory /nonexistent-dir-nettools does not exist"
        ));
        let e = Destination::new(Path::new("/"));
        assert!(e.is_err_and(|e| e.to_string() == "/ is not a file name"));
        let e = Destination::new(Path::new("/tmp"));
        assert!(e.is_err_and(|e| e.to_string() == "/tmp is a directory"));
        assert_eq!(
            plain(&io::Error::from_raw_os_error(libc::ENOSPC)),
            "no space left on device"
        );
    }
}
