/**
 * The group info panel: name and kind, members with presence, and for the owner adding
 * (find by name) and removing members. Leaving the group is here too.
 */
import * as chat from "../chat.js";
import { on, state } from "../store.js";
import { $, frameScheduler, h, reconcile, setText } from "./dom.js";
import { avatar } from "./format.js";
import { updatePresenceDots } from "./sidebar.js";

const memberNodes = new Map();
const resultNodes = new Map();

function group() {
  const c = state.convs.get(`g:${state.members?.group}`);
  return c?.group ?? null;
}

function isOwner() {
  return group()?.owner === state.me?.id;
}

export function init() {
  $("members-close").addEventListener("click", () => chat.closeMembers());
  $("leave").addEventListener("click", () => {
    if (state.members) chat.leaveGroup(state.members.group);
  });
  $("member-add").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("member-add-input").value.trim();
    if (name) chat.findUsers(name, "members");
  });
  const schedule = frameScheduler(render);
  on("members", schedule);
  on("presence", schedule);
  on("convs", schedule);
  on("users", (forWhom) => {
    if (forWhom === "members") renderResults();
  });
}

export function reset() {
  memberNodes.clear();
  resultNodes.clear();
  $("member-list").replaceChildren();
  $("member-add-results").replaceChildren();
  $("members-panel").hidden = true;
}

function createMember(m) {
  const remove = h("button", {
    class: "small danger-text",
    text: "Remove",
    testid: "member-remove",
    data: { user: m.id },
    attrs: { type: "button", "aria-label": `Remove ${m.name}` },
    on: { click: () => chat.removeMember(state.members.group, m.id) },
  });
  const tags = h("span", { class: "tags" });
  const li = h(
    "li",
    { class: "member-item", testid: "member-item", data: { user: m.id } },
    avatar(m.id, m.name, { presenceUser: m.id }),
    h("span", { class: "user-name", text: m.name }),
    tags,
    remove,
  );
  li._refs = { remove, tags };
  return li;
}

function updateMember(li, m) {
  const g = group();
  const { remove, tags } = li._refs;
  const labels = [];
  if (m.id === g?.owner) labels.push("owner");
  if (m.id === state.me?.id) labels.push("you");
  const text = labels.join(" · ");
  setText(tags, text);
  tags.hidden = !text;
  remove.hidden = !isOwner() || m.id === state.me?.id;
}

function render() {
  const panel = $("members-panel");
  const data = state.members;
  const g = group();
  panel.hidden = !data || !g;
  if (panel.hidden) return;
  setText($("members-title"), g.name);
  const count = data.members
    ? `${data.members.length} member${data.members.length === 1 ? "" : "s"}`
    : "Loading…";
  setText($("group-meta"), `${g.public ? "Public" : "Private"} group · ${count}`);
  $("member-add").hidden = !isOwner();
  const list = [...(data.members ?? [])].sort((a, b) =>
    (b.id === g.owner) - (a.id === g.owner) || a.name.localeCompare(b.name)
  );
  reconcile($("member-list"), list, memberNodes, (m) => m.id, createMember, updateMember);
  updatePresenceDots(panel);
  renderResults();
}

function renderResults() {
  const data = state.members;
  const members = new Set((data?.members ?? []).map((m) => m.id));
  const users = state.usersFor === "members" && state.users && isOwner()
    ? state.users.filter((u) => !members.has(u.id))
    : [];
  reconcile($("member-add-results"), users, resultNodes, (u) => u.id, (u) =>
    h(
      "li",
      { class: "member-item", data: { user: u.id } },
      avatar(u.id, u.name, { presenceUser: u.id }),
      h("span", { class: "user-name", text: u.name }),
      h("button", {
        class: "small primary",
        text: "Add",
        testid: "member-add-button",
        data: { user: u.id },
        attrs: { type: "button", "aria-label": `Add ${u.name}` },
        on: {
          click: (e) => {
            e.currentTarget.disabled = true;
            chat.addMember(data.group, u.id);
          },
        },
      }),
    ), () => {});
  updatePresenceDots($("member-add-results"));
}
