//! Image rows: name, where the image directory is, and its manifest (JSON,
//! the image's own description, kept verbatim).

use super::{Store, StoreError, is_unique_violation};
use rusqlite::{OptionalExtension, params};

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub name: String,
    pub source: String,
    pub kernel_version: Option<String>,
    pub dir: String,
    pub created_at: i64,
    pub manifest: String,
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        name: r.get(0)?,
        source: r.get(1)?,
        kernel_version: r.get(2)?,
        dir: r.get(3)?,
        created_at: r.get(4)?,
        manifest: r.get(5)?,
    })
}

const COLUMNS: &str = "name, source, kernel_version, dir, created_at, manifest";

impl Store {
    pub fn insert_image(&self, img: &ImageRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                &format!("INSERT INTO images ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    img.name,
                    img.source,
                    img.kernel_version,
                    img.dir,
                    img.created_at,
                    img.manifest
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::DuplicateImage(img.name.clone())
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM images WHERE name = ?1"),
                [name],
                from_row,
            )
            .optional()?)
        })
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {COLUMNS} FROM images ORDER BY name"))?;
            let rows = st.query_map([], from_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Deletes an image row; refused while a VM still uses the image.
    pub fn delete_image(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let user: Option<String> = tx
                .query_row(
                    "SELECT name FROM vms WHERE image = ?1 LIMIT 1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(vm) = user {
                return Err(StoreError::ImageInUse {
                    image: name.into(),
                    vm,
                });
            }
            Ok(tx.execute("DELETE FROM images WHERE name = ?1", [name])? > 0)
        })
    }
}

#[cfg(test)]
pub(crate) fn sample(name: &str) -> ImageRecord {
    ImageRecord {
        name: name.into(),
        source: "minimal".into(),
        kernel_version: Some("6.1.0".into()),
        dir: format!("/images/{name}"),
        created_at: 1,
        manifest: "{}".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_and_names_are_unique() {
        let s = Store::open_in_memory().unwrap();
        s.insert_image(&sample("minimal")).unwrap();
        assert_eq!(s.image("minimal").unwrap(), Some(sample("minimal")));
        assert!(matches!(
            s.insert_image(&sample("minimal")),
            Err(StoreError::DuplicateImage(_))
        ));
        assert_eq!(s.images().unwrap().len(), 1);
        assert!(s.delete_image("minimal").unwrap());
        assert!(!s.delete_image("minimal").unwrap());
    }
}
