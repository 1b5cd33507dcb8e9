//! A dataset ZIP on this machine: readable as a ZIP, under Segmind's size
//! limit, with at least one image, every image at the top level.
//!
//! An image is recognised by its first bytes (JPEG, PNG, WebP), not by its
//! name: a renamed PDF is not an image to Segmind either. Caption files
//! (`.txt`) beside the images are fine. What macOS and editors leave behind
//! (`__MACOSX/`, dot-files such as `.DS_Store`) is ignored, with a note,
//! since Segmind skips it too; anything else is reported. Only each entry's
//! first bytes are read, so a large or hostile archive costs little.

use super::{MAX_DATASET_BYTES, Report, megabytes};
use std::{fs::File, io::Read, path::Path};

/// The names Segmind takes as images.
const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// What an entry's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
    Webp,
}

impl ImageKind {
    /// Recognises JPEG (`FF D8 FF`), PNG (its 8-byte signature) and WebP
    /// (`RIFF....WEBP`).
    pub fn sniff(head: &[u8]) -> Option<ImageKind> {
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageKind::Jpeg)
        } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageKind::Png)
        } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            Some(ImageKind::Webp)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "JPEG",
            ImageKind::Png => "PNG",
            ImageKind::Webp => "WebP",
        }
    }
}

/// What a check of a local ZIP found, with the counts worth printing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZipReport {
    pub report: Report,
    pub size: u64,
    pub images: usize,
    pub captions: usize,
}

/// Checks the ZIP at `path`.
pub fn check_zip(path: &Path) -> ZipReport {
    let mut out = ZipReport::default();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            out.report
                .problem(None, format!("cannot open {}: {e}", path.display()));
            return out;
        }
    };
    out.size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if out.size >= MAX_DATASET_BYTES {
        out.report.problem(
            None,
            format!(
                "the ZIP is {}; Segmind takes datasets under {}",
                megabytes(out.size),
                megabytes(MAX_DATASET_BYTES)
            ),
        );
    }
    let mut archive = match zip::ZipArchive::new(file) {
        Ok(archive) => archive,
        Err(e) => {
            out.report
                .problem(None, format!("not readable as a ZIP archive: {e}"));
            return out;
        }
    };
    let mut ignored_macos = 0usize;
    let mut ignored_hidden = Vec::new();
    for index in 0..archive.len() {
        let mut entry = match archive.by_index(index) {
            Ok(entry) => entry,
            Err(e) => {
                out.report
                    .problem(None, format!("entry {index} cannot be read: {e}"));
                continue;
            }
        };
        let name = entry.name().to_owned();
        let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
        if parts.first() == Some(&"__MACOSX") {
            ignored_macos += 1;
            continue;
        }
        if parts.iter().any(|p| p.starts_with('.')) {
            ignored_hidden.push(name);
            continue;
        }
        if entry.is_dir() {
            // A folder says nothing by itself; what is in it is reported.
            continue;
        }
        let in_folder = parts.len() > 1;
        let extension = parts
            .last()
            .and_then(|p| p.rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase())
            .unwrap_or_default();
        let mut head = [0u8; 12];
        let read = match read_head(&mut entry, &mut head) {
            Ok(read) => read,
            Err(e) => {
                out.report
                    .problem(Some(&name), format!("cannot be read: {e}"));
                continue;
            }
        };
        let named_image = IMAGE_EXTENSIONS.contains(&extension.as_str());
        match (ImageKind::sniff(&head[..read]), named_image) {
            (Some(kind), true) if in_folder => out.report.problem(
                Some(&name),
                format!(
                    "a {} image in a folder; Segmind takes images only at the top level of the ZIP",
                    kind.name()
                ),
            ),
            (Some(_), true) => out.images += 1,
            (Some(kind), false) => out.report.problem(
                Some(&name),
                format!(
                    "a {} image without an image name; name it .jpg, .jpeg, .png or .webp",
                    kind.name()
                ),
            ),
            (None, true) => out.report.problem(
                Some(&name),
                "named like an image, but its content is not JPEG, PNG or WebP",
            ),
            (None, false) if extension == "txt" && !in_folder => out.captions += 1,
            (None, false) if extension == "txt" => out.report.problem(
                Some(&name),
                "a caption in a folder; captions go beside their images at the top level",
            ),
            (None, false) => out.report.problem(
                Some(&name),
                "neither an image (.jpg, .jpeg, .png, .webp) nor a caption (.txt)",
            ),
        }
    }
    if ignored_macos > 0 {
        out.report.notes.push(format!(
            "ignored {ignored_macos} entr{} under __MACOSX/ (left by macOS's Compress)",
            if ignored_macos == 1 { "y" } else { "ies" }
        ));
    }
    if !ignored_hidden.is_empty() {
        out.report.notes.push(format!(
            "ignored hidden file(s): {}",
            ignored_hidden.join(", ")
        ));
    }
    if out.images == 0 {
        out.report.problem(
            None,
            "no image at the top level of the ZIP; Segmind needs at least one .jpg, .jpeg, .png or .webp",
        );
    }
    out
}

/// Reads up to `head.len()` bytes from the start of an entry.
fn read_head(entry: &mut impl Read, head: &mut [u8]) -> std::io::Result<usize> {
    let mut read = 0;
    while read < head.len() {
        match entry.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F'];
    const WEBP: &[u8] = b"RIFF\x10\0\0\0WEBPVP8 ";

    fn zip_of(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        let mut writer = zip::ZipWriter::new(file.reopen().expect("reopen"));
        for (name, bytes) in entries {
            if name.ends_with('/') {
                writer
                    .add_directory(*name, SimpleFileOptions::default())
                    .expect("a folder");
            } else {
                writer
                    .start_file(*name, SimpleFileOptions::default())
                    .expect("an entry");
                writer.write_all(bytes).expect("written");
            }
        }
        writer.finish().expect("finished");
        file
    }

    fn entries_at_fault(report: &ZipReport) -> Vec<Option<String>> {
        report
            .report
            .problems
            .iter()
            .map(|p| p.entry.clone())
            .collect()
    }

    #[test]
    fn images_by_content_at_the_top_level_with_captions_pass() {
        let file = zip_of(&[
            ("a.png", PNG),
            ("a.txt", b"a photo of TOK"),
            ("b.JPG", JPEG),
            ("c.webp", WEBP),
        ]);
        let report = check_zip(file.path());
        assert!(report.report.is_ok(), "{:?}", report.report);
        assert_eq!((report.images, report.captions), (3, 1));
    }

    #[test]
    fn an_image_in_a_folder_is_named() {
        let file = zip_of(&[("set/", b""), ("set/a.png", PNG)]);
        let report = check_zip(file.path());
        assert_eq!(
            entries_at_fault(&report),
            [Some("set/a.png".to_owned()), None]
        );
        assert!(
            report.report.problems[0]
                .message
                .contains("only at the top level"),
            "{:?}",
            report.report
        );
        assert!(report.report.problems[1].message.contains("no image"));
    }

    #[test]
    fn macos_leftovers_and_dot_files_are_ignored_with_a_note() {
        let file = zip_of(&[
            ("a.png", PNG),
            ("__MACOSX/", b""),
            ("__MACOSX/._a.png", b"\0\x05\x16\x07"),
            (".DS_Store", b"\0\0\0\x01Bud1"),
        ]);
        let report = check_zip(file.path());
        assert!(report.report.is_ok(), "{:?}", report.report);
        assert_eq!(
            report.report.notes,
            [
                "ignored 2 entries under __MACOSX/ (left by macOS's Compress)",
                "ignored hidden file(s): .DS_Store"
            ]
        );
    }

    #[test]
    fn a_zip_without_an_image_is_refused() {
        let file = zip_of(&[("a.txt", b"caption only")]);
        let report = check_zip(file.path());
        assert_eq!(entries_at_fault(&report), [None]);
        assert!(report.report.problems[0].message.starts_with("no image"));
    }

    #[test]
    fn a_renamed_non_image_is_named() {
        let file = zip_of(&[("a.png", PNG), ("b.jpg", b"%PDF-1.7 not a photo")]);
        let report = check_zip(file.path());
        assert_eq!(entries_at_fault(&report), [Some("b.jpg".to_owned())]);
        assert_eq!(
            report.report.problems[0].message,
            "named like an image, but its content is not JPEG, PNG or WebP"
        );
    }

    #[test]
    fn other_files_and_unnamed_images_are_named() {
        let file = zip_of(&[("a.png", PNG), ("notes.md", b"# hi"), ("photo", JPEG)]);
        let report = check_zip(file.path());
        assert_eq!(
            entries_at_fault(&report),
            [Some("notes.md".to_owned()), Some("photo".to_owned())]
        );
        assert!(report.report.problems[1].message.contains("JPEG image"));
    }

    #[test]
    fn a_file_that_is_not_a_zip_is_refused() {
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        file.write_all(b"not a zip at all").expect("written");
        let report = check_zip(file.path());
        assert_eq!(entries_at_fault(&report), [None]);
        assert!(
            report.report.problems[0]
                .message
                .starts_with("not readable as a ZIP")
        );
    }

    #[test]
    fn a_zip_at_the_size_limit_is_refused() {
        let file = zip_of(&[("a.png", PNG)]);
        let bytes = std::fs::read(file.path()).expect("read");
        // A ZIP is read from its end, so bytes before its first entry leave
        // it readable while making the file as large as the limit.
        let big = tempfile::NamedTempFile::new().expect("a temporary file");
        let mut out = big.reopen().expect("reopen");
        out.write_all(&vec![0u8; MAX_DATASET_BYTES as usize - bytes.len()])
            .expect("padding");
        out.write_all(&bytes).expect("the zip");
        drop(out);
        let report = check_zip(big.path());
        assert_eq!(report.size, MAX_DATASET_BYTES);
        assert!(
            report.report.problems[0]
                .message
                .contains("Segmind takes datasets under 100.0 MB"),
            "{:?}",
            report.report
        );
    }

    #[test]
    fn content_is_recognised_by_its_first_bytes() {
        assert_eq!(ImageKind::sniff(PNG), Some(ImageKind::Png));
        assert_eq!(ImageKind::sniff(JPEG), Some(ImageKind::Jpeg));
        assert_eq!(ImageKind::sniff(WEBP), Some(ImageKind::Webp));
        assert_eq!(ImageKind::sniff(b"RIFF\x10\0\0\0WAVE"), None);
        assert_eq!(ImageKind::sniff(b"\xFF\xD8"), None);
    }
}
