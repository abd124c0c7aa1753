//! XML in and out. In: [`read`] refuses what a payment file never needs
//! and an attacker always does (DTDs, hence entities: XXE, billion
//! laughs), anything but UTF-8, and documents past their bounds (nodes,
//! nesting). Out: [`Element`] trees written by quick-xml, which escapes
//! every text and attribute.

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use crate::problem::FieldError;

/// Deepest nesting a document may have. The deepest path of pain.001 is
/// about a dozen elements; anything far past it is not a payment file.
pub const DEPTH_MAX: usize = 40;

/// Reads a document: UTF-8, well-formed, no DTD, at most `nodes_max`
/// nodes (elements, texts, attributes) and [`DEPTH_MAX`] levels.
pub fn read(bytes: &[u8], nodes_max: u32) -> Result<roxmltree::Document<'_>, FieldError> {
    let refuse = |message: String| FieldError::new("body", message);
    let text = std::str::from_utf8(bytes).map_err(|e| refuse(format!("must be UTF-8 encoded XML: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(declaration) = text
        .strip_prefix("<?xml")
        .and_then(|rest| rest.split_once("?>"))
        .map(|(d, _)| d)
        && let Some(encoding) = declared_encoding(declaration)
        && !encoding.eq_ignore_ascii_case("UTF-8")
    {
        return Err(refuse(format!(
            "declares encoding {encoding:?}: ISO 20022 documents are UTF-8"
        )));
    }
    // roxmltree refuses a DTD with declarations but lets an empty one
    // (`<!DOCTYPE x>`) through: refuse every DTD, before parsing.
    if text.contains("<!DOCTYPE") {
        return Err(refuse(
            "contains a DTD (<!DOCTYPE …>); DTDs and entities are refused".to_owned(),
        ));
    }
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: nodes_max,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).map_err(|error| match error {
        roxmltree::Error::NodesLimitReached => refuse(format!("has more than {nodes_max} XML nodes")),
        roxmltree::Error::DtdDetected => {
            refuse("contains a DTD (<!DOCTYPE …>); DTDs and entities are refused".to_owned())
        }
        roxmltree::Error::UnknownEntityReference(name, pos) => refuse(format!(
            "refers to the entity &{name}; at {pos}: only XML's predefined entities are allowed"
        )),
        other => refuse(format!("is not well-formed XML: {other}")),
    })?;
    // Depth, without recursion: a stack of (node, depth).
    let mut stack = vec![(doc.root_element(), 1usize)];
    while let Some((node, depth)) = stack.pop() {
        if depth > DEPTH_MAX {
            let path: Vec<&str> = node
                .ancestors()
                .filter(roxmltree::Node::is_element)
                .map(|n| n.tag_name().name())
                .take(4)
                .collect();
            return Err(FieldError::new(
                path.into_iter().rev().collect::<Vec<_>>().join("/"),
                format!("nests deeper than {DEPTH_MAX} elements"),
            ));
        }
        stack.extend(
            node.children()
                .filter(roxmltree::Node::is_element)
                .map(|c| (c, depth + 1)),
        );
    }
    Ok(doc)
}

fn declared_encoding(declaration: &str) -> Option<&str> {
    let rest = &declaration[declaration.find("encoding")? + "encoding".len()..];
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    rest[1..].split(quote).next()
}

/// The text of the first child element named `name`, trimmed.
pub fn child_text<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name).and_then(|n| n.text()).map(str::trim)
}

/// The first child element named `name`.
pub fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| n.is_element() && n.tag_name().name() == name)
}

/// The child elements named `name`.
pub fn children<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// The element at a path of child names (`["DbtrAcct", "Id", "IBAN"]`).
pub fn descend<'a, 'i>(node: roxmltree::Node<'a, 'i>, path: &[&str]) -> Option<roxmltree::Node<'a, 'i>> {
    path.iter().try_fold(node, |at, name| child(at, name))
}

/// An element to write: a name, attributes, and text or children.
#[derive(Debug, Clone)]
pub struct Element {
    name: &'static str,
    attributes: Vec<(&'static str, String)>,
    text: Option<String>,
    children: Vec<Element>,
}

impl Element {
    pub fn new(name: &'static str) -> Element {
        Element {
            name,
            attributes: Vec::new(),
            text: None,
            children: Vec::new(),
        }
    }

    /// `<name>text</name>`.
    pub fn text(name: &'static str, text: impl Into<String>) -> Element {
        Element {
            text: Some(text.into()),
            ..Element::new(name)
        }
    }

    pub fn attribute(mut self, name: &'static str, value: impl Into<String>) -> Element {
        self.attributes.push((name, value.into()));
        self
    }

    pub fn child(mut self, child: Element) -> Element {
        self.children.push(child);
        self
    }

    /// A child when there is one.
    pub fn child_opt(mut self, child: Option<Element>) -> Element {
        self.children.extend(child);
        self
    }

    pub fn children(mut self, children: impl IntoIterator<Item = Element>) -> Element {
        self.children.extend(children);
        self
    }

    /// `<outer><inner>…</inner></outer>` along a path of names, ending in
    /// `leaf`: `Element::wrap(&["Id", "IBAN"], text)`.
    pub fn path(names: &[&'static str], leaf: Element) -> Element {
        names
            .iter()
            .rev()
            .fold(leaf, |inner, name| Element::new(name).child(inner))
    }

    /// The element's own text, when it has some.
    pub fn text_content(&self) -> Option<&str> {
        self.text.as_deref()
    }

    fn write(&self, writer: &mut quick_xml::Writer<Vec<u8>>) -> std::io::Result<()> {
        let mut start = BytesStart::new(self.name);
        for (name, value) in &self.attributes {
            start.push_attribute((*name, value.as_str()));
        }
        match (&self.text, self.children.is_empty()) {
            (None, true) => writer.write_event(Event::Empty(start))?,
            _ => {
                writer.write_event(Event::Start(start))?;
                if let Some(text) = &self.text {
                    writer.write_event(Event::Text(BytesText::new(text)))?;
                }
                for child in &self.children {
                    child.write(writer)?;
                }
                writer.write_event(Event::End(BytesEnd::new(self.name)))?;
            }
        }
        Ok(())
    }
}

/// A whole document: the XML declaration, then `<Document xmlns=…>` around
/// the message element, indented.
pub fn document(namespace: &str, message: Element) -> String {
    let root = Element::new("Document").attribute("xmlns", namespace).child(message);
    let mut writer = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail.
    writer
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .and_then(|_| root.write(&mut writer))
        .expect("writing XML into memory");
    let mut bytes = writer.into_inner();
    bytes.push(b'\n');
    String::from_utf8(bytes).expect("quick-xml writes the UTF-8 it is given")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(xml: &str) -> String {
        read(xml.as_bytes(), 1000).unwrap_err().message
    }

    #[test]
    fn dtds_and_entities_are_refused() {
        let laughs =
            r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><a>&lol2;</a>"#;
        assert!(refusal(laughs).contains("DTD"));
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>"#;
        assert!(refusal(xxe).contains("DTD"));
        assert!(refusal("<!DOCTYPE a><a/>").contains("DTD"));
        assert!(refusal("<a>&x;</a>").contains("entity &x;"));
        assert_eq!(
            read(b"<a>&amp;&#x41;</a>", 1000).unwrap().root_element().text(),
            Some("&A")
        );
    }

    #[test]
    fn bounds_are_enforced() {
        let deep = format!("{}{}", "<a>".repeat(DEPTH_MAX + 1), "</a>".repeat(DEPTH_MAX + 1));
        let error = read(deep.as_bytes(), 10_000).unwrap_err();
        assert!(error.message.contains("deeper"), "{error:?}");
        assert!(refusal(&"<a>".repeat(10)).contains("well-formed"));
        let wide = format!("<a>{}</a>", "<b/>".repeat(2000));
        assert!(refusal(&wide).contains("nodes"));
        assert!(read(b"\xff<a/>", 10).unwrap_err().message.contains("UTF-8"));
        assert!(refusal(r#"<?xml version="1.0" encoding="ISO-8859-1"?><a/>"#).contains("UTF-8"));
    }

    #[test]
    fn written_text_is_escaped() {
        let xml = document("urn:x", Element::text("Nm", "A & B <C>").attribute("Ccy", "\"E\""));
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let nm = doc.root_element().first_element_child().unwrap();
        assert_eq!(nm.text(), Some("A & B <C>"));
        assert_eq!(nm.attribute("Ccy"), Some("\"E\""));
    }
}
