"""The three recorded sessions beside the demo: what is said when, and what the agent says back.

- long-meeting: ten minutes, mostly silence, four questions (a meeting where the agent is on call);
- rapid-qa: three minutes of back-to-back questions, a few of them asked twice or answered by fixed phrases;
- screen-walkthrough: four minutes of slides shared throughout, questions about what is on screen.

Agent answers are written long, the way a model answers without speech sizing (several sentences, 400-650
characters): the emulated LLM speaks them, and the speech-sizing lever is what shortens them. Fixed phrases
(greeting, confirmations, the goodbye) are spoken as they are, never sent to a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Turn:
    at: float  # when the user starts speaking, seconds
    text: str  # what the user says
    reply: str  # what the agent answers (a long model answer, or a fixed phrase)
    fixed: bool = False  # the reply is a fixed phrase (TTS only, no model)
    detail: bool = False  # the user asked for detail: a long answer is wanted


@dataclass(frozen=True, slots=True)
class SessionDef:
    name: str
    title: str
    room: str
    seconds: float
    turns: tuple[Turn, ...]
    greeting: str = "Hi, I'm the Lumen Desk assistant. Ask me anything, and share your screen if it helps."
    screen: tuple[float, float] | None = None  # (start, end) of the screen share, seconds
    slide_changes: tuple[float, ...] = field(default_factory=tuple)
    seed: int = 0


_PRICING = ("The Business plan costs 49 dollars per agent seat per month with annual billing, or 59 dollars "
            "month to month. It includes single sign-on, SCIM provisioning, audit logs and a 99.9 percent uptime "
            "commitment. The Team plan is 19 dollars per seat and covers shared inboxes, macros and basic "
            "reporting, but not SSO. If you are comparing the two for a security review, Business is usually "
            "the one auditors ask for. I can also walk you through volume discounts above fifty seats.")
_SSO = ("To set up single sign-on with Okta, open Admin, then Security, then SSO, and choose SAML 2.0. Copy the "
        "ACS URL and entity ID into a new Okta app integration, then paste Okta's metadata URL back into Lumen "
        "Desk and press Test connection. Once the test passes, turn on Enforce SSO. For removing people who "
        "leave you also want SCIM, which Okta drives with an API token you generate on the same page, so "
        "deprovisioning happens the moment someone is deactivated in Okta.")
_RATE = ("HTTP 429 means your API client went over its rate limit. Check the X-RateLimit-Limit, "
         "X-RateLimit-Remaining and Retry-After headers on the response, back off for the number of seconds "
         "Retry-After gives, and spread bulk jobs over time. The default limit is 600 requests per minute per "
         "workspace. If you need more, support can raise it for Business plans. Logging the remaining count "
         "on every call is the quickest way to see which job is eating the budget.")
_MAILBOX = ("ERR_MAILBOX_AUTH means Lumen Desk can no longer sign in to your mailbox, which is expected right "
            "after a password rotation. Open Channels, then Email, select the mailbox and enter the new IMAP "
            "password, or better, switch the channel to OAuth so future rotations do not break it. After "
            "saving, press Sync now and watch the status turn green within a minute. If it stays red, check "
            "that IMAP access is still allowed for that account on your mail server.")
_OVERVIEW = ("Lumen Desk is a customer support help desk that brings email, chat and voice into one shared "
             "inbox, with macros, routing rules and reporting on top. Teams use it to answer customers faster "
             "without switching tools, and it connects to your identity provider and CRM. There is a Team plan "
             "for small teams and a Business plan with SSO, SCIM and audit logs for larger companies. Most "
             "teams are up and running in an afternoon.")
_SLIDE = ("The slide you are sharing shows the quarterly support dashboard: a title bar, several lines of "
          "text, and a bar chart on the right with five bars. The tallest bar is the third one, which looks like "
          "the busiest month for tickets. The text lines appear to list the key metrics, such as first response "
          "time and resolution rate. If you scroll or zoom in, I can read the exact numbers for you.")
_CHART = ("The chart on this slide compares five categories side by side. The first two bars are short, the "
          "third is the tallest, and the last two fall back to the middle. That pattern usually means a peak "
          "in the middle period followed by a partial recovery. The colours match the legend in the title bar. "
          "If you tell me what each category stands for, I can summarise the trend in a sentence for your "
          "notes.")
_NEXT = ("This new slide is about the rollout plan. It has a coloured title bar, a list of steps down the left, "
         "and a smaller chart on the right. The steps seem to go from setup, to pilot, to the full launch. The "
         "chart looks like a timeline of weekly adoption. If you want, I can turn this slide into three spoken "
         "bullet points you can use in the meeting, or compare it with the previous slide.")
_SCIM = ("SCIM is what removes people automatically. With SSO alone, someone who leaves can no longer sign in, "
         "but their seat and their open tickets stay assigned until an admin cleans up. With SCIM, Okta tells "
         "Lumen Desk the moment a user is deactivated, the seat is freed and tickets are reassigned by your "
         "routing rules. For a security audit, auditors usually want to see both. Both are included in the "
         "Business plan.")
_AUDIT = ("Audit logs record every sign-in, permission change, export and deletion with who did it and when. "
          "You find them under Admin, then Security, then Audit log, and you can filter by user, action or "
          "date and export them as CSV. On the Business plan they are kept for one year. You can also stream "
          "them to your SIEM through the webhook integration. That combination is what most security "
          "questionnaires ask about.")
_DETAIL = ("Here is the full comparison, step by step. Forty agents on Team cost 40 times 19 dollars times 12 "
           "months, which is 9,120 dollars a year. On Business with annual billing they cost 40 times 49 times "
           "12, which is 23,520 dollars a year, so the difference is 14,400 dollars. What you get for that is "
           "SSO, SCIM provisioning, audit logs kept for a year, and the uptime commitment. For a company that "
           "must pass a security audit, SSO and SCIM are usually hard requirements, because auditors check that "
           "access is removed the day someone leaves, and doing that by hand across forty seats is where audits "
           "fail. So if the audit is a must, the difference is mostly the price of passing it; if it is not, "
           "Team with careful manual offboarding can work for a while.")

_REPEAT = "Sorry, could you say that again?"
_WELCOME = "You're welcome!"
_BYE = "You're welcome, have a great day. Goodbye!"
_ONE_MOMENT = "Sure, one moment."

LONG_MEETING = SessionDef(
    name="long-meeting", title="Weekly support sync with the assistant on call", room="tenant_org_lumen_weekly-sync",
    seconds=600.0, seed=101,
    turns=(
        Turn(95.0, "What does the Business plan cost per agent seat?", _PRICING),
        Turn(240.0, "How do we set up single sign-on with Okta?", _SSO),
        Turn(410.0, "Our API client gets HTTP 429 errors. What should we check?", _RATE),
        Turn(540.0, "Thanks, that's all for today.", _BYE, fixed=True),
    ),
)

RAPID_QA = SessionDef(
    name="rapid-qa", title="Rapid questions from a prospect", room="tenant_org_lumen_rapid-qa",
    seconds=180.0, seed=202,
    turns=(
        Turn(6.0, "What is Lumen Desk?", _OVERVIEW),
        Turn(16.0, "How much is the Business plan?", _PRICING),
        Turn(26.0, "Does it do single sign-on with Okta?", _SSO),
        Turn(36.0, "Sorry, what was the price again?", _PRICING),
        Turn(46.0, "Mm, can you hear me?", _REPEAT, fixed=True),
        Turn(52.0, "Do I also need SCIM?", _SCIM),
        Turn(62.0, "Where are the audit logs?", _AUDIT),
        Turn(72.0, "Great, thanks.", _WELCOME, fixed=True),
        Turn(78.0, "We see ERR_MAILBOX_AUTH after a password change.", _MAILBOX),
        Turn(88.0, "And HTTP 429 from the API?", _RATE),
        Turn(98.0, "Uh, sorry, one more thing.", _ONE_MOMENT, fixed=True),
        Turn(104.0, "Compare the yearly cost for 40 agents on Team and Business, step by step, in detail.",
             _DETAIL, detail=True),
        Turn(124.0, "Thanks.", _WELCOME, fixed=True),
        Turn(130.0, "Which plan has SCIM?", _SCIM),
        Turn(140.0, "What is the price per seat on Business?", _PRICING),
        Turn(150.0, "Could you repeat the Okta steps?", _SSO),
        Turn(165.0, "Perfect, goodbye.", _BYE, fixed=True),
    ),
)

SCREEN_WALKTHROUGH = SessionDef(
    name="screen-walkthrough", title="Walkthrough of the quarterly slides", room="tenant_org_lumen_slides",
    seconds=240.0, seed=303, screen=(5.0, 235.0), slide_changes=(40.0, 80.0, 120.0, 160.0, 200.0),
    turns=(
        Turn(12.0, "Can you see the slide I'm sharing? What does it show?", _SLIDE),
        Turn(50.0, "What does the chart on this slide say?", _CHART),
        Turn(90.0, "And this next slide?", _NEXT),
        Turn(130.0, "What does the chart on this slide say?", _CHART),
        Turn(170.0, "Great, thanks.", _WELCOME, fixed=True),
        Turn(205.0, "What is on this last slide?", _NEXT),
    ),
)

SESSIONS: dict[str, SessionDef] = {s.name: s for s in (LONG_MEETING, RAPID_QA, SCREEN_WALKTHROUGH)}
