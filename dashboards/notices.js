// The notices list of the live page: what a person watching should see as it happens
// (host syncs, divergence rollbacks, skipped evaluations, applied commands, stalled
// ranks), newest first.
"use strict";

const MAX_NOTICES = 50;

function noticeText(msg) {
  const at = `iteration ${msg.iters}: `;
  switch (msg.type) {
    case "sync_detected":
      return at + `the host waited for the device in ${msg.culprit}`;
    case "divergence_rolled_back":
      return at + `diverged (${msg.reason}): ` + (msg.stopped ? "stopped"
        : `back to iteration ${msg.restored_to}, learning rates × ${msg.lr_factor}`);
    case "eval_skipped":
      return at + `evaluation ${msg.prefix} skipped: the previous one was still running ` +
        `(${msg.skipped} skipped so far)`;
    case "settings_rolled_back":
      return at + `the optimizer's step failed (${msg.error}): step skipped, settings back` +
        describeChanges(msg.changes);
    case "stalled":
      return `rank ${msg.rank}: no step boundary for ${msg.seconds} s after ${at}` +
        (msg.waiting_for && msg.waiting_for.length
          ? `waiting in a collective that rank(s) ${msg.waiting_for.join(", ")} have not reached`
          : `in ${msg.where}`);
    case "command_applied":
      return `after ${at}${msg.op} from ${msg.client}` +
        (msg.ok ? describeChanges(msg.changes) : ` failed: ${msg.error}`);
    default:
      return null;
  }
}

function showNotice(msg) {
  const line = noticeText(msg);
  if (line === null) return;
  const list = document.getElementById("notices");
  const item = document.createElement("li");
  const informative = msg.type === "eval_skipped" || (msg.type === "command_applied" && msg.ok);
  item.className = informative ? "info" : "warning";
  item.appendChild(document.createTextNode(line));
  if (msg.stack) {  // where the sync happened, where each thread of a stalled rank is
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "where";
    const stack = document.createElement("pre");
    stack.textContent = msg.stack;
    details.append(summary, stack);
    item.appendChild(details);
  }
  list.prepend(item);  // newest first
  while (list.children.length > MAX_NOTICES) list.lastElementChild.remove();
  document.getElementById("notices-section").hidden = false;
}

