// Presentation of codes, times and statuses.

/** `XXXX-XXXX-XXXX`, whatever the spacing it came with. */
export function groupCode(code) {
  const flat = String(code).replace(/[^0-9A-Za-z]/g, "").toUpperCase();
  return flat.match(/.{1,4}/g)?.join("-") ?? "";
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  weekday: "short", day: "numeric", month: "short", year: "numeric",
  hour: "2-digit", minute: "2-digit", timeZoneName: "short",
});
const shortDate = new Intl.DateTimeFormat(undefined, {
  day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit",
});

export const formatDateTime = (iso) => dateTime.format(new Date(iso));
export const formatShort = (iso) => shortDate.format(new Date(iso));

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** "2 days 23 hours left", "5 hours 12 minutes left", "45 seconds left", "expired". */
export function timeLeft(ms) {
  if (ms <= 0) return "expired";
  const seconds = Math.floor(ms / 1000);
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days > 0) return `${plural(days, "day")} ${plural(hours, "hour")} left`;
  if (hours > 0) return `${plural(hours, "hour")} ${plural(minutes, "minute")} left`;
  if (minutes > 0) return `${plural(minutes, "minute")} left`;
  return `${plural(seconds, "second")} left`;
}

export const AUTHORISATION = {
  authorised: { label: "Authorised", tone: "good" },
  unauthorised: { label: "Not authorised", tone: "neutral" },
};

export const TOKEN = {
  active: { label: "Code active", tone: "info" },
  redeemed: { label: "Code used", tone: "neutral" },
  expired: { label: "Code expired", tone: "neutral" },
  revoked: { label: "Code revoked", tone: "neutral" },
};
