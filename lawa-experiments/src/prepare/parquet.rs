//! Documents from a Parquet file: one per row, from a string column, read one row group at a
//! time with the `parquet` crate's row API (only the text column is decoded).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use super::source::{Document, ReadOptions, SourceFile};

/// Reads every row of `file`'s text column, in order, handing each to `emit` (unreadable rows to
/// `bad`). Row-group bytes are added to `bytes_read` as each group is done.
pub fn read(
    file: &SourceFile,
    options: &ReadOptions,
    bytes_read: &AtomicU64,
    emit: &mut dyn FnMut(Document) -> Result<()>,
    bad: &mut dyn FnMut(anyhow::Error) -> Result<()>,
) -> Result<()> {
    let path = &file.path;
    let handle = File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let reader = SerializedFileReader::new(handle)
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema();
    let column = text_column(schema, &options.text_field)
        .map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))?;
    let mut row_number = 0u64;
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .with_context(|| format!("{}: row group {g} cannot be read", path.display()))?;
        let projection = Some(column.clone());
        let rows = group
            .get_row_iter(projection)
            .with_context(|| format!("{}: row group {g} cannot be read", path.display()))?;
        for row in rows {
            row_number += 1;
            let name = format!("{}:row {row_number}", path.display());
            let row = row.with_context(|| format!("{name}: cannot be read"))?;
            match row.get_column_iter().next().map(|(_, field)| field) {
                Some(Field::Str(text)) => emit(Document {
                    name,
                    text: text.clone(),
                })?,
                Some(Field::Null) | None => bad(anyhow::anyhow!(
                    "{name}: column `{}` is null",
                    options.text_field
                ))?,
                Some(Field::Bytes(bytes)) => match std::str::from_utf8(bytes.data()) {
                    Ok(text) => emit(Document {
                        name,
                        text: text.to_string(),
                    })?,
                    Err(e) => bad(anyhow::anyhow!(
                        "{name}: not UTF-8 (invalid byte at offset {})",
                        e.valid_up_to()
                    ))?,
                },
                Some(other) => bad(anyhow::anyhow!(
                    "{name}: column `{}` holds {other:?}, not text",
                    options.text_field
                ))?,
            }
        }
        let compressed = reader.metadata().row_group(g).compressed_size().max(0) as u64;
        bytes_read.fetch_add(compressed, Ordering::Relaxed);
    }
    Ok(())
}

/// The schema of the one column named `field`, for a projection.
fn text_column(schema: &Type, field: &str) -> Result<Type, String> {
    let fields = schema.get_fields();
    let Some(column) = fields.iter().find(|f| f.name() == field) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        return Err(format!(
            "no column `{field}` (it has {}); choose one with --text-field",
            names.join(", ")
        ));
    };
    if !column.is_primitive() {
        return Err(format!("column `{field}` is not a string column"));
    }
    let mut builder = Type::group_type_builder(schema.name());
    builder = builder.with_fields(vec![column.clone()]);
    builder.build().map_err(|e| e.to_string())
}

/// Writes `texts` as a Parquet file with one nullable string column `column`, in two row groups
/// (the form the tests and the corpus benchmark use).
pub fn write_text_column(
    path: &std::path::Path,
    column: &str,
    texts: &[Option<&str>],
) -> Result<()> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let message = format!("message schema {{ optional binary {column} (UTF8); }}");
    let schema =
        Arc::new(parquet::schema::parser::parse_message_type(&message).context("parquet schema")?);
    let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(file, schema, props)?;
    // Two row groups, so that readers are exercised across groups.
    for half in texts.chunks(texts.len().div_ceil(2).max(1)) {
        let mut group = writer.next_row_group()?;
        if let Some(mut col) = group.next_column()? {
            let values: Vec<ByteArray> = half
                .iter()
                .flatten()
                .map(|t| ByteArray::from(t.as_bytes().to_vec()))
                .collect();
            let levels: Vec<i16> = half.iter().map(|t| i16::from(t.is_some())).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, Some(&levels), None)?;
            col.close()?;
        }
        group.close()?;
    }
    writer.close()?;
    Ok(())
}
