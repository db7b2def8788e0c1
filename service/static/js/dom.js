// Small DOM helpers shared by every view.

export const $ = (id) => document.getElementById(id);

/** Create an element: el("td", {class: "num", title: "x"}, "text", childNode, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, ...children);
  return node;
}

/** node.append() without null/undefined children (the DOM would write them as "null"). */
export function append(node, ...children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** node.replaceChildren() with the same rule as append(). */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, ...children);
}

export function badge(status) {
  return el("span", { class: `badge status-${status}`, text: status });
}

export function showBanner(message) {
  const banner = $("banner");
  banner.textContent = message;
  banner.hidden = !message;
}
