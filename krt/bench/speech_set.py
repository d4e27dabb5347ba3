"""The LLM-text set: replies as an LLM voice agent writes them, each with what a person says.

An agent's replies are not clean prose: they carry prices, codes, dates, units, lists,
markdown and web addresses, and a TTS that reads "$3.7M" as "dollar three point seven m"
is wrong however clear its voice. Each reply here is spoken through the TTS, transcribed
by Whisper and scored by word error rate against ``spoken``, per kind, so a kind that
is read badly shows up as that kind's error rate; ``ordinary`` (IEEE Harvard lists 3 to
6) and ``agent`` (plain replies) carry nothing to interpret and are the floor the other
kinds are read against. Whisper writes numbers as digits, so its transcript must be
brought to words before it is compared.

``spoken`` is what a careful US-English reader says aloud, in plain words:

- lower case, words separated by single spaces, no punctuation but the apostrophe of a
  contraction or possessive; a hyphenated word is two words ("check in", "forty two");
- numbers as said, without "and" except before cents: "$42.50" is "forty two dollars and
  fifty cents", "$89.00" is "eighty nine dollars", "$2,340" is "two thousand three hundred
  forty dollars", "$0.99" is "ninety nine cents", "a $25 credit" is "a twenty five dollar
  credit", a range "$10–$20" is "ten to twenty dollars";
- decimals with "point": "$3.7M" is "three point seven million dollars", "$12K" is
  "twelve thousand dollars", "3x faster" is "three times faster";
- dimensions with "by": "20 x 30 cm" is "twenty by thirty centimeters", a resolution in
  pairs: "1920x1080" is "nineteen twenty by ten eighty";
- codes and ids digit by digit, zero as "zero", "#" as "number", letters one by one:
  "Ticket #5123" is "ticket number five one two three", "ABX-7731" is "a b x seven seven
  three one"; rooms, gates, seats and flights as people say them ("room twelve oh four",
  "gate b twelve", "flight u a twenty three sixteen");
- versions: "v3.2.1" is "version three point two point one", "Ubuntu 22.04" is "ubuntu
  twenty two oh four";
- dates US-style with ordinals: "06/09" and "June 9th" are "june ninth", years in pairs
  ("twenty twenty five", "nineteen ninety eight") except "two thousand" and "two thousand
  nine";
- times: "8:05" is "eight oh five", "8:05 PM" is "eight oh five p m", "14:30" is
  "fourteen thirty", ":00" is not read ("10:00 a.m." is "ten a m");
- units and abbreviations expanded ("4 mi." is "four miles", "Dr." is "doctor", "e.g." is
  "for example", "i.e." is "that is", "etc." is "et cetera"); initialisms said as letters
  ("p m", "i d", "i o s");
- web addresses as read, without "https://" ("example dot com slash help", "support at
  acme dot com"), phone numbers digit by digit with zero as "zero", but a toll-free "800"
  as "eight hundred";
- markdown markup, emoji, link targets and list markers ("1.", "-", "•") are not spoken;
  "Step 1:" is.

Where a reader could say a text two common ways the text was left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable


@attrs.frozen
class Reply:
    kind: str
    text: str
    """As an LLM writes it."""
    spoken: str
    """As a person reads it aloud: words only."""


_MONEY = (
    ("Your total comes to $42.50.", "your total comes to forty two dollars and fifty cents"),
    ("The repair estimate is $2,340.", "the repair estimate is two thousand three hundred forty dollars"),
    ("That plan costs €30 a month.", "that plan costs thirty euros a month"),
    ("Shipping to London is £12.", "shipping to london is twelve pounds"),
    ("The app costs $0.99 to download.", "the app costs ninety nine cents to download"),
    ("Most replacement chargers cost $10–$20.", "most replacement chargers cost ten to twenty dollars"),
    (
        "Your refund of $15.75 is on its way.",
        "your refund of fifteen dollars and seventy five cents is on its way",
    ),
    (
        "You'll get a $25 credit on your next bill.",
        "you'll get a twenty five dollar credit on your next bill",
    ),
    ("The late fee is $5.", "the late fee is five dollars"),
    ("Your current balance is $1,000.", "your current balance is one thousand dollars"),
    (
        "The deposit is $150, and it's fully refundable.",
        "the deposit is one hundred fifty dollars and it's fully refundable",
    ),
    ("The upgrade is just $1 more per month.", "the upgrade is just one dollar more per month"),
    ("Your card was charged $89.00 on Friday.", "your card was charged eighty nine dollars on friday"),
    ("The hotel is ¥18,000 per night.", "the hotel is eighteen thousand yen per night"),
    ("A round trip ticket is about $640.", "a round trip ticket is about six hundred forty dollars"),
    (
        "The minimum order for free shipping is $35.",
        "the minimum order for free shipping is thirty five dollars",
    ),
    (
        "Your monthly payment will be $312.48.",
        "your monthly payment will be three hundred twelve dollars and forty eight cents",
    ),
    ("The fee is $0.05 per message.", "the fee is five cents per message"),
    (
        "We can offer $12,500 for your current car.",
        "we can offer twelve thousand five hundred dollars for your current car",
    ),
    (
        "Tickets are €45 for adults and €20 for children.",
        "tickets are forty five euros for adults and twenty euros for children",
    ),
    ("You saved $2.01 on this order.", "you saved two dollars and one cent on this order"),
    ("Prices range from £8 to £15.", "prices range from eight pounds to fifteen pounds"),
    ("You have $3.10 left on your gift card.", "you have three dollars and ten cents left on your gift card"),
)

_MAGNITUDES = (
    (
        "The company raised $3.7M in seed funding.",
        "the company raised three point seven million dollars in seed funding",
    ),
    ("The grant is worth $12K.", "the grant is worth twelve thousand dollars"),
    ("The platform now has 1.5B users.", "the platform now has one point five billion users"),
    (
        "About 2.3 million people use the app each day.",
        "about two point three million people use the app each day",
    ),
    ("The house sold for $450k.", "the house sold for four hundred fifty thousand dollars"),
    ("The game passed 10M downloads last week.", "the game passed ten million downloads last week"),
    (
        "The new chip is 3x faster than the old one.",
        "the new chip is three times faster than the old one",
    ),
    ("Caching made the page load 10x faster.", "caching made the page load ten times faster"),
    (
        "The premium tier gives you 4x the storage.",
        "the premium tier gives you four times the storage",
    ),
    (
        "It's 5X more efficient than the previous model.",
        "it's five times more efficient than the previous model",
    ),
    (
        "Their annual revenue is about $2.5B.",
        "their annual revenue is about two point five billion dollars",
    ),
    ("The channel just hit 15k subscribers.", "the channel just hit fifteen thousand subscribers"),
    (
        "The city has a budget of $1.2 billion.",
        "the city has a budget of one point two billion dollars",
    ),
    ("The project cost $900K to build.", "the project cost nine hundred thousand dollars to build"),
    (
        "More than 40M people watched the final.",
        "more than forty million people watched the final",
    ),
    ("The fund manages $7.5M in assets.", "the fund manages seven point five million dollars in assets"),
    ("The new index makes searches 6x quicker.", "the new index makes searches six times quicker"),
    (
        "The post reached 250K views overnight.",
        "the post reached two hundred fifty thousand views overnight",
    ),
    (
        "They sold 1.2M units in the first quarter.",
        "they sold one point two million units in the first quarter",
    ),
    (
        "The award comes with a $25 million endowment.",
        "the award comes with a twenty five million dollar endowment",
    ),
    ("Battery life is up to 1.8x longer.", "battery life is up to one point eight times longer"),
    (
        "The market could reach $80B by the end of the decade.",
        "the market could reach eighty billion dollars by the end of the decade",
    ),
)

_DIMENSIONS = (
    ("The frame is 20 x 30 cm.", "the frame is twenty by thirty centimeters"),
    ("Your screen resolution is 1920x1080.", "your screen resolution is nineteen twenty by ten eighty"),
    (
        "You'll need a few 2×4 boards for the shelf.",
        "you'll need a few two by four boards for the shelf",
    ),
    ("The puzzle uses a 3 x 3 grid.", "the puzzle uses a three by three grid"),
    ("The rug measures 5 x 8 feet.", "the rug measures five by eight feet"),
    ("The shed is 10 x 12 ft.", "the shed is ten by twelve feet"),
    (
        "The monitor runs at 3840 x 2160.",
        "the monitor runs at thirty eight forty by twenty one sixty",
    ),
    ("The box is 40 x 30 x 20 cm.", "the box is forty by thirty by twenty centimeters"),
    (
        "Upload a photo that's at least 600x600 pixels.",
        "upload a photo that's at least six hundred by six hundred pixels",
    ),
    ("The table is 72 x 36 inches.", "the table is seventy two by thirty six inches"),
    ("A 9x13 pan works best for this recipe.", "a nine by thirteen pan works best for this recipe"),
    ("We print 4 x 6 photos while you wait.", "we print four by six photos while you wait"),
    ("The old display was 1024×768.", "the old display was ten twenty four by seven sixty eight"),
    ("The parking space is 2.4 x 5 m.", "the parking space is two point four by five meters"),
    ("The tiles are 12 x 24 inches each.", "the tiles are twelve by twenty four inches each"),
    ("The mattress is 60 x 80 inches.", "the mattress is sixty by eighty inches"),
)

_CODES = (
    ("Ticket #5123 has been updated.", "ticket number five one two three has been updated"),
    (
        "Your order #A-10442 shipped this morning.",
        "your order number a one zero four four two shipped this morning",
    ),
    ("Your code is 604813.", "your code is six zero four eight one three"),
    ("Your new PIN is 4921.", "your new pin is four nine two one"),
    ("Your confirmation code is ABX-7731.", "your confirmation code is a b x seven seven three one"),
    ("I've opened Case No. 55120 for you.", "i've opened case number five five one two zero for you"),
    ("You're booked on flight UA 2316.", "you're booked on flight u a twenty three sixteen"),
    ("Your room is 1204.", "your room is twelve oh four"),
    (
        "Enter the verification code 2718 when prompted.",
        "enter the verification code two seven one eight when prompted",
    ),
    (
        "Your tracking number is TBA3920571.",
        "your tracking number is t b a three nine two zero five seven one",
    ),
    ("Your member ID is 880142.", "your member i d is eight eight zero one four two"),
    ("The card on file ends in 4417.", "the card on file ends in four four one seven"),
    ("Invoice #10087 is now paid.", "invoice number one zero zero eight seven is now paid"),
    ("Your booking reference is QX7P2M.", "your booking reference is q x seven p two m"),
    ("You can reach me at extension 2107.", "you can reach me at extension two one zero seven"),
    ("Your flight leaves from gate B12.", "your flight leaves from gate b twelve"),
    ("You're in seat 14C.", "you're in seat fourteen c"),
    ("Use promo code SAVE20 at checkout.", "use promo code save twenty at checkout"),
    ("Your policy number is PL-448812.", "your policy number is p l four four eight eight one two"),
    ("The courier left it at unit 3B.", "the courier left it at unit three b"),
    ("Your one-time passcode is 090215.", "your one time passcode is zero nine zero two one five"),
)

_VERSIONS = (
    ("Please update to v3.2.1.", "please update to version three point two point one"),
    ("This was fixed in version 1.10.2.", "this was fixed in version one point ten point two"),
    (
        "The library requires Python 3.11 or newer.",
        "the library requires python three point eleven or newer",
    ),
    ("Your phone is running iOS 17.4.", "your phone is running i o s seventeen point four"),
    ("Please move to v2 before Friday.", "please move to version two before friday"),
    ("Release 4.2 adds an offline mode.", "release four point two adds an offline mode"),
    ("Android 14 is fully supported.", "android fourteen is fully supported"),
    (
        "Try restarting after you install Windows 11.",
        "try restarting after you install windows eleven",
    ),
    (
        "This feature needs macOS 14.5 or later.",
        "this feature needs mac o s fourteen point five or later",
    ),
    ("Your router is on firmware 2.8.3.", "your router is on firmware two point eight point three"),
    ("We tested it on Ubuntu 22.04.", "we tested it on ubuntu twenty two oh four"),
    ("Version 10.4 fixed the login bug.", "version ten point four fixed the login bug"),
    ("Your headphones support Bluetooth 5.3.", "your headphones support bluetooth five point three"),
    ("The server runs PHP 8.2.", "the server runs p h p eight point two"),
    (
        "Upgrade from v4.1 to v4.2 to get the fix.",
        "upgrade from version four point one to version four point two to get the fix",
    ),
    ("The patch is in Python 3.12.4.", "the patch is in python three point twelve point four"),
)

_DATES = (
    ("Your appointment is on 06/09.", "your appointment is on june ninth"),
    ("The invoice is due 6/9/2025.", "the invoice is due june ninth twenty twenty five"),
    (
        "Your subscription renews on 2025-06-09.",
        "your subscription renews on june ninth twenty twenty five",
    ),
    ("We'll ship it by June 9th.", "we'll ship it by june ninth"),
    ("The next opening is Mon, Jun 9.", "the next opening is monday june ninth"),
    ("Your payment posts on the 21st.", "your payment posts on the twenty first"),
    ("Revenue grew in Q3 2024.", "revenue grew in q three twenty twenty four"),
    ("The new plan launches in 2026.", "the new plan launches in twenty twenty six"),
    ("Your account was opened in 2009.", "your account was opened in two thousand nine"),
    ("That policy dates back to 2000.", "that policy dates back to two thousand"),
    (
        "Your warranty expires on Dec. 31, 2025.",
        "your warranty expires on december thirty first twenty twenty five",
    ),
    (
        "The office is closed from Dec 24 to Jan 2.",
        "the office is closed from december twenty fourth to january second",
    ),
    ("Your last payment was on March 3rd.", "your last payment was on march third"),
    ("The clinic reopens Tue, 7/1.", "the clinic reopens tuesday july first"),
    (
        "This offer is valid through 11/30/2025.",
        "this offer is valid through november thirtieth twenty twenty five",
    ),
    ("The law took effect in 1998.", "the law took effect in nineteen ninety eight"),
    (
        "Prices held steady between 2019 and 2021.",
        "prices held steady between twenty nineteen and twenty twenty one",
    ),
    ("Your delivery is set for Friday, October 10.", "your delivery is set for friday october tenth"),
    (
        "Please file the 2024 return by April 15.",
        "please file the twenty twenty four return by april fifteenth",
    ),
    ("The brand was founded in the 1990s.", "the brand was founded in the nineteen nineties"),
    ("Your trial ends on Feb 29, 2028.", "your trial ends on february twenty ninth twenty twenty eight"),
    ("We'll call you back by 1/15.", "we'll call you back by january fifteenth"),
)

_TIMES = (
    ("Your driver arrives at 8:05.", "your driver arrives at eight oh five"),
    ("Your train departs at 8:05 PM.", "your train departs at eight oh five p m"),
    ("Check-in opens at 14:30.", "check in opens at fourteen thirty"),
    ("I've booked you for 9am tomorrow.", "i've booked you for nine a m tomorrow"),
    ("The webinar starts at 10:00 a.m.", "the webinar starts at ten a m"),
    ("Lunch is served from noon to 1:30.", "lunch is served from noon to one thirty"),
    ("We have a slot from 3:30–4:00 PM.", "we have a slot from three thirty to four p m"),
    ("Our support line is open 9 AM to 5 PM.", "our support line is open nine a m to five p m"),
    ("The outage began at 2:47 a.m.", "the outage began at two forty seven a m"),
    ("Please arrive by 11:15 AM.", "please arrive by eleven fifteen a m"),
    ("The deadline is 11:59 PM tonight.", "the deadline is eleven fifty nine p m tonight"),
    ("Your call is scheduled for 12:30 p.m.", "your call is scheduled for twelve thirty p m"),
    ("Boarding starts at 6:40.", "boarding starts at six forty"),
    ("The pharmacy opens at 7:00 AM.", "the pharmacy opens at seven a m"),
    ("Maintenance runs from 1–3 AM.", "maintenance runs from one to three a m"),
    ("The meeting moved to 4:15.", "the meeting moved to four fifteen"),
    ("Your reminder is set for 9:05 tonight.", "your reminder is set for nine oh five tonight"),
    ("The last ferry leaves at 21:45.", "the last ferry leaves at twenty one forty five"),
)

_UNITS = (
    ("The store is 5 km away.", "the store is five kilometers away"),
    ("It's about 4 mi. from your location.", "it's about four miles from your location"),
    ("Your wait time is 5 min.", "your wait time is five minutes"),
    ("The package weighs 12 lbs.", "the package weighs twelve pounds"),
    ("Add 3 oz of cream to the sauce.", "add three ounces of cream to the sauce"),
    ("It has a 2.5 GHz processor.", "it has a two point five gigahertz processor"),
    ("It comes with 16GB of RAM.", "it comes with sixteen gigabytes of ram"),
    ("It's 72°F and sunny.", "it's seventy two degrees fahrenheit and sunny"),
    ("Expect winds up to 25 mph.", "expect winds up to twenty five miles per hour"),
    ("Latency is under 500 ms.", "latency is under five hundred milliseconds"),
    ("The drive takes about 3 hrs.", "the drive takes about three hours"),
    ("The doorway is 6 ft 2 in tall.", "the doorway is six feet two inches tall"),
    ("Preheat the oven to 350°F.", "preheat the oven to three hundred fifty degrees fahrenheit"),
    ("Try to drink 2 L of water a day.", "try to drink two liters of water a day"),
    ("The bag holds up to 10 kg.", "the bag holds up to ten kilograms"),
    ("Download speeds reach 300 Mbps.", "download speeds reach three hundred megabits per second"),
    ("It's 20°C in Paris right now.", "it's twenty degrees celsius in paris right now"),
    ("The file is 2.4 MB.", "the file is two point four megabytes"),
    ("A 60 W bulb is the safe maximum.", "a sixty watt bulb is the safe maximum"),
    ("Take 500 mg twice a day.", "take five hundred milligrams twice a day"),
    ("The cable is 1 m long.", "the cable is one meter long"),
    ("Use 2 tbsp of olive oil.", "use two tablespoons of olive oil"),
    ("The tank holds 15 gal.", "the tank holds fifteen gallons"),
)

_ABBREVIATIONS = (
    ("Dr. Smith can see you on Thursday.", "doctor smith can see you on thursday"),
    ("Our store is on Main St. next to the bank.", "our store is on main street next to the bank"),
    (
        "You'll need a photo ID, e.g. a passport or driver's license.",
        "you'll need a photo i d for example a passport or driver's license",
    ),
    (
        "Use your primary email, i.e. the one on your account.",
        "use your primary email that is the one on your account",
    ),
    ("We carry phones, tablets, laptops, etc.", "we carry phones tablets laptops et cetera"),
    ("The repair takes approx. two days.", "the repair takes approximately two days"),
    ("Here's how basic vs. premium compares.", "here's how basic versus premium compares"),
    ("Mr. Lee called about his order.", "mister lee called about his order"),
    ("Your bill is due Jan. 15.", "your bill is due january fifteenth"),
    ("Mrs. Patel asked for a callback.", "missus patel asked for a callback"),
    ("Our St. Louis office handles returns.", "our saint louis office handles returns"),
    ("Est. delivery is Friday.", "estimated delivery is friday"),
    ("Please contact the billing dept. for a copy.", "please contact the billing department for a copy"),
    ("Prof. Chen teaches the evening class.", "professor chen teaches the evening class"),
    ("The clinic is on Oak Ave. near the school.", "the clinic is on oak avenue near the school"),
    ("We're closed on Martin Luther King Jr. Day.", "we're closed on martin luther king junior day"),
    ("The trail starts at the base of Mt. Hood.", "the trail starts at the base of mount hood"),
    ("Our phone lines are open Mon. through Fri.", "our phone lines are open monday through friday"),
)

_LISTS = (
    (
        "Here's what to try:\n1. Restart the router\n2. Wait 30 seconds\n3. Reconnect your phone",
        "here's what to try restart the router wait thirty seconds reconnect your phone",
    ),
    (
        "To reset your password:\n1. Open Settings\n2. Tap Security\n3. Choose Reset Password",
        "to reset your password open settings tap security choose reset password",
    ),
    (
        "You'll need:\n- Your ID\n- A recent bill\n- Proof of address",
        "you'll need your i d a recent bill proof of address",
    ),
    (
        "First, unplug the device. Second, hold the power button for ten seconds.",
        "first unplug the device second hold the power button for ten seconds",
    ),
    (
        "Your options are:\n• Standard shipping\n• Express shipping\n• Store pickup",
        "your options are standard shipping express shipping store pickup",
    ),
    (
        "* Check the cable\n* Check the outlet\n* Try another charger",
        "check the cable check the outlet try another charger",
    ),
    (
        "1) Log in\n2) Go to Billing\n3) Click Update Card",
        "log in go to billing click update card",
    ),
    (
        "Step 1: Open the app.\nStep 2: Tap your profile.\nStep 3: Select Sign Out.",
        "step one open the app step two tap your profile step three select sign out",
    ),
    (
        "A few things to check:\n1. Is the power light on?\n2. Is the cable secure?",
        "a few things to check is the power light on is the cable secure",
    ),
    (
        "First, I'll verify your identity. Then I'll update your address. Finally, I'll send a confirmation.",
        "first i'll verify your identity then i'll update your address finally i'll send a confirmation",
    ),
    (
        "Your order includes:\n- 2 shirts\n- 1 pair of jeans\n- 3 pairs of socks",
        "your order includes two shirts one pair of jeans three pairs of socks",
    ),
    (
        "Top picks:\n1. The blue model\n2. The silver model\n3. The black model",
        "top picks the blue model the silver model the black model",
    ),
    (
        "Before your visit:\n- Arrive 15 minutes early\n- Bring your insurance card",
        "before your visit arrive fifteen minutes early bring your insurance card",
    ),
    (
        "Here are the steps:\n1. Unplug the printer.\n2. Remove the tray.\n3. Clear the jam.",
        "here are the steps unplug the printer remove the tray clear the jam",
    ),
    (
        "Our hours:\n- Monday: closed\n- Tuesday to Saturday: 9 to 5\n- Sunday: noon to 4",
        "our hours monday closed tuesday to saturday nine to five sunday noon to four",
    ),
    (
        "Three quick steps: first, confirm your email; second, set a password; third, add a card.",
        "three quick steps first confirm your email second set a password third add a card",
    ),
)

_MARKDOWN = (
    ("**Important:** your card expires next month.", "important your card expires next month"),
    ("I *really* appreciate your patience.", "i really appreciate your patience"),
    ("Run `npm install` and then restart the app.", "run n p m install and then restart the app"),
    ("## Steps\nOpen the app and tap Settings.", "steps open the app and tap settings"),
    (
        "You can find it in [our help center](https://example.com/help).",
        "you can find it in our help center",
    ),
    ("Your order is confirmed! 🎉", "your order is confirmed"),
    ("**Good news:** your refund has been approved.", "good news your refund has been approved"),
    ("Please type `yes` to confirm.", "please type yes to confirm"),
    ("### Summary\nYour plan renews automatically.", "summary your plan renews automatically"),
    ("That's _exactly_ right. 👍", "that's exactly right"),
    ("Click **Save** and then **Close**.", "click save and then close"),
    ("See the [pricing page](https://example.com/pricing) for details.", "see the pricing page for details"),
    ("> Your message was delivered.", "your message was delivered"),
    ("Thanks so much! 😊 Have a great day.", "thanks so much have a great day"),
    ("# Welcome\nI'm here to help with your account.", "welcome i'm here to help with your account"),
    (
        "The setting is called `Dark Mode`, under **Display**.",
        "the setting is called dark mode under display",
    ),
    ("***Note:*** this can't be undone.", "note this can't be undone"),
)

_URLS = (
    ("Visit example.com/help for details.", "visit example dot com slash help for details"),
    ("You can email us at support@acme.com.", "you can email us at support at acme dot com"),
    ("Call us at 555-0142.", "call us at five five five zero one four two"),
    ("Our main line is (415) 555-0199.", "our main line is four one five five five five zero one nine nine"),
    (
        "Reach us toll free at +1 800 555 0100.",
        "reach us toll free at plus one eight hundred five five five zero one zero zero",
    ),
    ("Send the form to jane.doe@gmail.com.", "send the form to jane dot doe at gmail dot com"),
    ("Reset your password at acme.io/reset.", "reset your password at acme dot i o slash reset"),
    ("The docs are at docs.acme.dev/start.", "the docs are at docs dot acme dot dev slash start"),
    (
        "Check the status page at status.example.org.",
        "check the status page at status dot example dot org",
    ),
    (
        "Go to https://www.example.com/account to update it.",
        "go to w w w dot example dot com slash account to update it",
    ),
    (
        "Call 1-888-555-0123 any time.",
        "call one eight eight eight five five five zero one two three any time",
    ),
    ("Text STOP to 55012 to unsubscribe.", "text stop to five five zero one two to unsubscribe"),
    (
        "My direct line is 212-555-0148, ext. 3.",
        "my direct line is two one two five five five zero one four eight extension three",
    ),
    ("In an emergency, call 911.", "in an emergency call nine one one"),
    ("Forward the receipt to billing@example.com.", "forward the receipt to billing at example dot com"),
    ("The login page is portal.acme.com/login.", "the login page is portal dot acme dot com slash login"),
    (
        "You can also write to help@shop.example.co.uk.",
        "you can also write to help at shop dot example dot co dot u k",
    ),
    (
        "Our fax number is (312) 555-0177.",
        "our fax number is three one two five five five zero one seven seven",
    ),
    (
        "Please call 800-555-0175 to activate your card.",
        "please call eight hundred five five five zero one seven five to activate your card",
    ),
    ("You can track it at example.com/track.", "you can track it at example dot com slash track"),
    (
        "Write to orders@example.com or call 555-0163.",
        "write to orders at example dot com or call five five five zero one six three",
    ),
)

_ORDINARY = (
    # IEEE (1969) Harvard sentences, lists 3 to 6; lists 1 and 2 are the intelligibility tests'.
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living.",
    "A king ruled the state in the early days.",
    "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.",
    "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
    "Mesh wire keeps chicks inside.",
    "The frosty air passed through the coat.",
    "The crooked maze failed to fool the mouse.",
    "Adding fast leads to wrong sums.",
    "The show was a flop from the very start.",
    "A saw is a tool used for making boards.",
    "The wagon moved on well oiled wheels.",
    "March the soldiers past the next hill.",
    "A cup of sugar makes sweet fudge.",
    "Place a rosebush near the porch steps.",
    "Both lost their lives in the raging storm.",
)

_AGENT = (
    "I can help you with that.",
    "Let me check your account.",
    "One moment while I pull up your order.",
    "Could you confirm the name on the account?",
    "Thanks for your patience.",
    "I'm sorry about the trouble with your delivery.",
    "Is there anything else I can help you with today?",
    "I've sent a confirmation to your email.",
    "Your appointment has been rescheduled.",
    "I'll transfer you to our billing team now.",
    "Can you tell me a little more about the problem?",
    "That should fix the issue.",
    "I wasn't able to find an order under that name.",
    "Would you like me to book that for you?",
    "Your payment went through successfully.",
    "I understand how frustrating that must be.",
    "Let's try restarting the device first.",
    "I've updated your shipping address.",
    "Please stay on the line.",
    "Great, you're all set.",
    "Sorry, could you say that one more time?",
    "Your refund should appear within a few business days.",
    "I can offer you a replacement or a full refund.",
    "The store closes early on holidays.",
    "Do you have your order number handy?",
    "I've added a note to your account.",
    "It looks like your card was declined.",
    "Would you prefer a morning or afternoon appointment?",
    "Your package is out for delivery today.",
    "I'm checking the available times now.",
    "You'll get a text when your driver arrives.",
    "Let me walk you through the setup.",
    "Sure, I can cancel that for you.",
    "Your subscription has been paused.",
    "We're busier than usual, so thanks for bearing with us.",
    "Could you spell your last name for me?",
    "I've reset your password.",
    "Is this the best number to reach you?",
    "Thanks for calling, and have a great day.",
    "No problem at all.",
    "Your table for four is confirmed.",
    "Happy to help.",
)


def _as_read(text: str) -> str:
    """A plain sentence as said: lower case, punctuation other than apostrophes dropped."""
    return " ".join("".join(c if c.isalpha() or c == "'" else " " for c in text.lower()).split())


_BY_KIND: dict[str, tuple[tuple[str, str], ...]] = {
    "money": _MONEY,
    "magnitudes": _MAGNITUDES,
    "dimensions": _DIMENSIONS,
    "codes": _CODES,
    "versions": _VERSIONS,
    "dates": _DATES,
    "times": _TIMES,
    "units": _UNITS,
    "abbreviations": _ABBREVIATIONS,
    "lists": _LISTS,
    "markdown": _MARKDOWN,
    "urls": _URLS,
    "ordinary": tuple((text, _as_read(text)) for text in _ORDINARY),
    "agent": tuple((text, _as_read(text)) for text in _AGENT),
}

KINDS: tuple[str, ...] = tuple(_BY_KIND)
"""Every kind, in the order reports list them."""

REPLIES: tuple[Reply, ...] = tuple(
    Reply(kind, text, spoken) for kind, pairs in _BY_KIND.items() for text, spoken in pairs
)
"""Every reply, kind by kind in the order of ``KINDS``."""


def replies_of(kinds: Iterable[str]) -> tuple[Reply, ...]:
    """The replies of the given kinds, in the order of ``REPLIES``; a single string is one kind."""
    wanted = {kinds} if isinstance(kinds, str) else set(kinds)
    unknown = sorted(wanted.difference(KINDS))
    if unknown:
        raise ValueError(f"unknown kind {', '.join(map(repr, unknown))}; known: {', '.join(KINDS)}")
    return tuple(reply for reply in REPLIES if reply.kind in wanted)
