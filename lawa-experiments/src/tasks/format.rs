//! Task files: JSON Lines, one example per line, in lawa's own format or in the layout a public
//! dataset is published in, turned into the requests lm-evaluation-harness makes of them.
//!
//! lawa's format (`lawa:` or no prefix):
//! - multiple choice: `{"context": "...", "choices": ["...", ...], "gold": 1}` — each choice is
//!   scored as the continuation `" " + choice` of the context;
//! - one context per choice (WinoGrande's form): `{"contexts": ["...", ...], "continuation":
//!   "...", "gold": 0}` — the shared continuation scored after each context;
//! - a target (LAMBADA's form): `{"context": "...", "target": " word"}` — scored as given.
//!
//! Published layouts, named before the path (`hellaswag:file.jsonl`): `hellaswag`, `piqa`,
//! `arc` (ARC-Easy and ARC-Challenge), `winogrande`, `sciq`, `lambada`, each mapped exactly as
//! the harness's task definition maps it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How a task file's lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// lawa's own format.
    Lawa,
    /// HellaSwag: `ctx_a`, `ctx_b`, `activity_label`, `endings`, `label`.
    Hellaswag,
    /// PIQA: `goal`, `sol1`, `sol2`, `label`.
    Piqa,
    /// ARC: `question`, `choices: {text, label}`, `answerKey`.
    Arc,
    /// WinoGrande: `sentence`, `option1`, `option2`, `answer`.
    Winogrande,
    /// SciQ: `question`, `distractor1..3`, `correct_answer`, `support`.
    Sciq,
    /// LAMBADA: `text`.
    Lambada,
}

impl Layout {
    /// The layout's name, as a task spec's prefix.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Lawa => "lawa",
            Layout::Hellaswag => "hellaswag",
            Layout::Piqa => "piqa",
            Layout::Arc => "arc",
            Layout::Winogrande => "winogrande",
            Layout::Sciq => "sciq",
            Layout::Lambada => "lambada",
        }
    }

    fn parse(name: &str) -> Option<Layout> {
        Some(match name {
            "lawa" => Layout::Lawa,
            "hellaswag" => Layout::Hellaswag,
            "piqa" => Layout::Piqa,
            "arc" | "arc_easy" | "arc_challenge" => Layout::Arc,
            "winogrande" => Layout::Winogrande,
            "sciq" => Layout::Sciq,
            "lambada" | "lambada_openai" => Layout::Lambada,
            _ => return None,
        })
    }
}

/// A task as given on the command line or in a config: `[layout:]path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The layout of its lines.
    pub layout: Layout,
    /// The JSONL file.
    pub path: PathBuf,
    /// The task's name in reports (the file's stem).
    pub name: String,
}

impl std::str::FromStr for TaskSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (layout, path) = match s.split_once(':') {
            Some((prefix, rest)) if !prefix.contains('/') => match Layout::parse(prefix) {
                Some(l) => (l, rest),
                None => {
                    return Err(format!(
                        "unknown task layout '{prefix}' (expected lawa, hellaswag, piqa, arc, winogrande, sciq or lambada)"
                    ))
                }
            },
            _ => (Layout::Lawa, s),
        };
        let path = PathBuf::from(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".jsonl").to_string())
            .unwrap_or_else(|| "task".into());
        Ok(TaskSpec { layout, path, name })
    }
}

/// Names tasks apart in reports: tasks whose file stems collide (`hellaswag/validation.jsonl`,
/// `piqa/validation.jsonl`) take as many of their folders' names as it takes to tell them
/// apart (`hellaswag/validation`); one file given twice is refused.
pub fn name_apart(tasks: &mut [TaskSpec]) -> Result<(), String> {
    for (i, a) in tasks.iter().enumerate() {
        if let Some(b) = tasks[i + 1..]
            .iter()
            .find(|b| crate::train::run_dir::same_path(&a.path, &b.path))
        {
            let layouts = match a.layout == b.layout {
                true => String::new(),
                false => format!(" ({} and {})", a.layout.name(), b.layout.name()),
            };
            return Err(format!(
                "task file {} is given twice{layouts}: give each file once",
                a.path.display()
            ));
        }
    }
    let stems: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let folders: Vec<Vec<String>> = tasks.iter().map(|t| folders_of(&t.path)).collect();
    for (i, task) in tasks.iter_mut().enumerate() {
        let rivals: Vec<usize> = (0..stems.len())
            .filter(|&j| j != i && stems[j] == stems[i])
            .collect();
        // The fewest folders, innermost first, that no rival shares.
        let mut depth = 0;
        while depth < folders[i].len()
            && rivals.iter().any(|&j| {
                folders[j]
                    .get(..=depth)
                    .is_some_and(|f| f == &folders[i][..=depth])
            })
        {
            depth += 1;
        }
        if !rivals.is_empty() {
            let taken = &folders[i][..(depth + 1).min(folders[i].len())];
            let prefix: Vec<&str> = taken.iter().rev().map(String::as_str).collect();
            task.name = format!("{}/{}", prefix.join("/"), stems[i]);
        }
    }
    // Left alike only by names that differ in `.jsonl` alone (`a/x`, `a/x.jsonl`).
    for (i, a) in tasks.iter().enumerate() {
        if let Some(b) = tasks[i + 1..].iter().find(|b| b.name == a.name) {
            return Err(format!(
                "tasks {} and {} would both be reported as {}: rename one of the files",
                a.path.display(),
                b.path.display(),
                a.name
            ));
        }
    }
    Ok(())
}

/// The names of a path's folders, innermost first, as written (made absolute where relative).
fn folders_of(path: &Path) -> Vec<String> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    path.parent()
        .into_iter()
        .flat_map(Path::ancestors)
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

impl serde::Serialize for TaskSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}:{}", self.layout.name(), self.path.display()))
    }
}

impl<'de> serde::Deserialize<'de> for TaskSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One example: the (context, continuation) pairs to score and how to read the scores.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// Choose among pairs by their log-likelihood.
    Choice {
        /// (context, continuation) per choice.
        pairs: Vec<(String, String)>,
        /// The choice texts, for `acc_norm`'s lengths (characters, without the delimiter);
        /// empty when the task has no `acc_norm` (WinoGrande).
        norm_texts: Vec<String>,
        /// The right choice.
        gold: usize,
    },
    /// Predict a target (LAMBADA): accuracy is the greedy match, plus its log-likelihood.
    Target {
        /// The context.
        context: String,
        /// The target, as scored.
        target: String,
    },
}

/// The examples of a task file with their line numbers, each error naming the file, line and
/// field.
pub fn read_examples(spec: &TaskSpec) -> Result<Vec<(usize, Example)>> {
    let text = std::fs::read_to_string(&spec.path)
        .with_context(|| format!("{}: cannot read", spec.path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", spec.path.display(), i + 1);
        let value: Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{at}: not JSON: {e}"))?;
        let example = example(spec.layout, &value).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        if let Example::Choice { pairs, gold, .. } = &example {
            if pairs.is_empty() {
                bail!("{at}: `choices` is empty");
            }
            if *gold >= pairs.len() {
                bail!(
                    "{at}: `gold` = {gold} is out of range for {} choices",
                    pairs.len()
                );
            }
        }
        out.push((i + 1, example));
    }
    if out.is_empty() {
        bail!("{}: holds no examples", spec.path.display());
    }
    Ok(out)
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name)
        .ok_or_else(|| format!("field `{name}` is missing"))
}

fn text(v: &Value, name: &str) -> Result<String, String> {
    field(v, name)?
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("field `{name}` is not a string"))
}

fn texts(v: &Value, name: &str) -> Result<Vec<String>, String> {
    field(v, name)?
        .as_array()
        .ok_or_else(|| format!("field `{name}` is not a list"))?
        .iter()
        .map(|t| {
            t.as_str()
                .map(String::from)
                .ok_or_else(|| format!("field `{name}` holds a non-string"))
        })
        .collect()
}

fn index(v: &Value, name: &str) -> Result<usize, String> {
    let f = field(v, name)?;
    f.as_u64()
        .or_else(|| f.as_str().and_then(|s| s.trim().parse().ok()))
        .map(|n| n as usize)
        .ok_or_else(|| format!("field `{name}` = {f} is not an index"))
}

/// `" " + choice` after the same context, for each choice.
fn choice(context: String, choices: Vec<String>, gold: usize, norm: bool) -> Example {
    Example::Choice {
        pairs: choices
            .iter()
            .map(|c| (context.clone(), format!(" {c}")))
            .collect(),
        norm_texts: if norm { choices } else { Vec::new() },
        gold,
    }
}

fn example(layout: Layout, v: &Value) -> Result<Example, String> {
    Ok(match layout {
        Layout::Lawa => lawa_example(v)?,
        Layout::Hellaswag => hellaswag_example(v)?,
        Layout::Piqa => choice(
            format!("Question: {}\nAnswer:", text(v, "goal")?),
            vec![text(v, "sol1")?, text(v, "sol2")?],
            index(v, "label")?,
            true,
        ),
        Layout::Arc => arc_example(v)?,
        Layout::Winogrande => winogrande_example(v)?,
        Layout::Sciq => choice(
            format!(
                "{}\nQuestion: {}\nAnswer:",
                text(v, "support")?.trim_start(),
                text(v, "question")?
            ),
            vec![
                text(v, "distractor1")?,
                text(v, "distractor2")?,
                text(v, "distractor3")?,
                text(v, "correct_answer")?,
            ],
            3,
            true,
        ),
        Layout::Lambada => {
            let t = text(v, "text")?;
            let (context, last) = t.rsplit_once(' ').ok_or("field `text` is one word")?;
            Example::Target {
                context: context.to_string(),
                target: format!(" {last}"),
            }
        }
    })
}

/// An example of lawa's own layout: a `target` after a `context`, one `continuation` after
/// several `contexts`, or `choices` after one `context`.
fn lawa_example(v: &Value) -> Result<Example, String> {
    Ok(if let Some(target) = v.get("target") {
        let target = target.as_str().ok_or("field `target` is not a string")?;
        Example::Target {
            context: text(v, "context")?,
            target: target.to_string(),
        }
    } else if v.get("contexts").is_some() {
        let contexts = texts(v, "contexts")?;
        let continuation = text(v, "continuation")?;
        Example::Choice {
            pairs: contexts
                .into_iter()
                .map(|c| (c, continuation.clone()))
                .collect(),
            norm_texts: Vec::new(),
            gold: index(v, "gold")?,
        }
    } else {
        choice(
            text(v, "context")?,
            texts(v, "choices")?,
            index(v, "gold")?,
            true,
        )
    })
}

/// An example of HellaSwag: the activity label and both context parts, the endings cleaned as
/// the harness cleans them.
fn hellaswag_example(v: &Value) -> Result<Example, String> {
    let ctx = format!("{} {}", text(v, "ctx_a")?, capitalize(&text(v, "ctx_b")?));
    let query = hellaswag_clean(&format!("{}: {ctx}", text(v, "activity_label")?));
    let endings = texts(v, "endings")?
        .iter()
        .map(|e| hellaswag_clean(e))
        .collect();
    Ok(choice(query, endings, index(v, "label")?, true))
}

/// An example of ARC: the choice whose label is the answer key.
fn arc_example(v: &Value) -> Result<Example, String> {
    let choices = field(v, "choices")?;
    let labels = texts(choices, "label")?;
    let key = text(v, "answerKey")?;
    let gold = labels
        .iter()
        .position(|l| *l == key)
        .ok_or_else(|| format!("answerKey {key:?} is not among the labels {labels:?}"))?;
    Ok(choice(
        format!("Question: {}\nAnswer:", text(v, "question")?),
        texts(choices, "text")?,
        gold,
        true,
    ))
}

/// An example of Winogrande: each option in the blank, the rest of the sentence scored after it.
fn winogrande_example(v: &Value) -> Result<Example, String> {
    let sentence = text(v, "sentence")?;
    let blank = sentence
        .find('_')
        .ok_or("field `sentence` has no blank `_`")?;
    let gold = match text(v, "answer")?.as_str() {
        "1" => 0,
        "2" => 1,
        other => {
            return Err(format!(
                "field `answer` = {other:?}: expected \"1\" or \"2\""
            ))
        }
    };
    let rest = format!(" {}", sentence[blank + 1..].trim());
    Ok(Example::Choice {
        pairs: [text(v, "option1")?, text(v, "option2")?]
            .into_iter()
            .map(|o| (format!("{}{o}", &sentence[..blank]), rest.clone()))
            .collect(),
        norm_texts: Vec::new(),
        gold,
    })
}

/// Python's `str.capitalize()`: the first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    }
}

/// The harness's HellaSwag `preprocess`: strip, `" [title]"` to `". "`, bracketed spans removed,
/// one pass of double spaces to single.
fn hellaswag_clean(text: &str) -> String {
    let t = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(open) = rest.find('[') {
        match rest[open..].find(']') {
            Some(close) if !rest[open..open + close].contains('\n') => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// The tokenizer-independent checks of a task file (for messages before a model is loaded).
pub fn check(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("{}: task file not found", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks of one file name in different folders are named by folder and file; the same file
    /// twice is refused; a spec serializes as it is written, path case kept.
    #[test]
    fn tasks_are_named_apart() {
        let specs =
            |v: &[&str]| -> Vec<TaskSpec> { v.iter().map(|s| s.parse().unwrap()).collect() };
        let names = |v: &[TaskSpec]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let mut tasks = specs(&[
            "hellaswag:h/Validation.jsonl",
            "piqa:p/Validation.jsonl",
            "lambada:l/test.jsonl",
        ]);
        name_apart(&mut tasks).unwrap();
        assert_eq!(names(&tasks), ["h/Validation", "p/Validation", "test"]);
        let mut twice = specs(&["a/x.jsonl", "hellaswag:./a/x.jsonl"]);
        let err = name_apart(&mut twice).unwrap_err();
        assert!(
            err.contains("a/x.jsonl is given twice (lawa and hellaswag)"),
            "{err}"
        );
        let mut deep = specs(&["v1/h/x.jsonl", "v2/h/x.jsonl", "h/y.jsonl"]);
        name_apart(&mut deep).unwrap();
        assert_eq!(names(&deep), ["v1/h/x", "v2/h/x", "y"]);
        let mut alike = specs(&["a/x", "a/x.jsonl"]);
        let err = name_apart(&mut alike).unwrap_err();
        assert!(err.contains("would both be reported as"), "{err}");
        let json = serde_json::to_string(&tasks[0]).unwrap();
        assert_eq!(json, "\"hellaswag:h/Validation.jsonl\"");
        let back: TaskSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.path, tasks[0].path);
    }

    #[test]
    fn published_layouts_map_as_the_harness_maps_them() {
        let ex =
            |layout, json: &str| example(layout, &serde_json::from_str(json).unwrap()).unwrap();
        let h = ex(
            Layout::Hellaswag,
            r#"{"ctx_a": "A man is sitting on a roof.", "ctx_b": "HE starts", "activity_label": "Roof shingle removal", "endings": ["  pulls up [title] roofing.", "is [header] ripping  it."], "label": "1"}"#,
        );
        let Example::Choice {
            pairs,
            norm_texts,
            gold,
        } = h
        else {
            panic!()
        };
        assert_eq!(
            pairs[0].0,
            "Roof shingle removal: A man is sitting on a roof. He starts"
        );
        assert_eq!(norm_texts, ["pulls up. roofing.", "is ripping it."]);
        assert_eq!(pairs[1].1, " is ripping it.");
        assert_eq!(gold, 1);
        let w = ex(
            Layout::Winogrande,
            r#"{"sentence": "Sarah was a much better surgeon than Maria so _'s cases were easier.", "option1": "Sarah", "option2": "Maria", "answer": "2"}"#,
        );
        let Example::Choice {
            pairs,
            norm_texts,
            gold,
        } = w
        else {
            panic!()
        };
        assert_eq!(
            pairs[0],
            (
                "Sarah was a much better surgeon than Maria so Sarah".into(),
                " 's cases were easier.".into()
            )
        );
        assert_eq!(
            pairs[1].0,
            "Sarah was a much better surgeon than Maria so Maria"
        );
        assert!(norm_texts.is_empty());
        assert_eq!(gold, 1);
        let a = ex(
            Layout::Arc,
            r#"{"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["1", "2", "3"]}, "answerKey": "2"}"#,
        );
        let Example::Choice { pairs, gold, .. } = a else {
            panic!()
        };
        assert_eq!(
            pairs[2],
            ("Question: Which is a gas?\nAnswer:".into(), " rock".into())
        );
        assert_eq!(gold, 1);
        let s = ex(
            Layout::Sciq,
            r#"{"question": "Q?", "distractor1": "a", "distractor2": "b", "distractor3": "c", "correct_answer": "d", "support": "  Facts."}"#,
        );
        let Example::Choice { pairs, gold, .. } = s else {
            panic!()
        };
        assert_eq!(
            pairs[3],
            ("Facts.\nQuestion: Q?\nAnswer:".into(), " d".into())
        );
        assert_eq!(gold, 3);
        let l = ex(Layout::Lambada, r#"{"text": "he opened the  door"}"#);
        assert_eq!(
            l,
            Example::Target {
                context: "he opened the ".into(),
                target: " door".into()
            }
        );
        let p = ex(
            Layout::Piqa,
            r#"{"goal": "g", "sol1": "x", "sol2": "y", "label": 0}"#,
        );
        let Example::Choice { pairs, .. } = p else {
            panic!()
        };
        assert_eq!(pairs[1], ("Question: g\nAnswer:".into(), " y".into()));
        assert_eq!(capitalize("hE sTARTS"), "He starts");
    }
}
